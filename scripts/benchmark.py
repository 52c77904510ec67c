"""Benchmark training/eval steps, AGC's cost and the input pipeline; prints a table and writes JSON.

  python scripts/benchmark.py --models=nfnet_f0,nf_resnet50 --batch_size=8 --image_size=128
  python scripts/benchmark.py --what=train,agc --models=nfnet_f0 --remat=false,true --out=bench.json
  python scripts/benchmark.py --what=train --models=nf_resnet50 --sam_rho=0,0.05   # SAM step vs plain
  python scripts/benchmark.py --what=eval --models=nfnet_f0 --image_size=256 --dtype=bfloat16
  python scripts/benchmark.py --what=input --data_dir=$TFDS_DATA_DIR --augment=cutmix_mixup_randaugment_405
  python scripts/benchmark.py --what=input --mini_imagenet=/tmp/mini   # builds a realistic miniature ImageNet
  python scripts/benchmark.py --compare=timm --what=train,eval --models=nfnet_f0 --dtype=float32,bfloat16
  python scripts/benchmark.py --compare=timm --what=ops --dtype=float32,bfloat16   # F0's convs, pass by pass

Every speed comes with the model FLOPs utilisation against this machine's matmul rate, measured in the same
run. --compare=timm times timm's equivalent step in a torch process of its own, taking turns with ours
(torch and timm must be importable; they are not dependencies of nfnet-jax). On CPU, --devices=N needs XLA_FLAGS=--xla_force_host_platform_device_count=N set before Python starts.
"""

import json
import sys

from absl import app, flags, logging

from nfnet_jax import benchmark, cli
from nfnet_jax import compare
from nfnet_jax import host_memory
from nfnet_jax import paths

flags.DEFINE_list('what', ['train'], f'Measurements to run, any of {list(benchmark.SUITES)}.')
flags.DEFINE_list('models', ['nfnet_f0'], 'Registered model names.')
flags.DEFINE_integer('batch_size', 8, 'Global batch size.')
flags.DEFINE_integer('image_size', 128, 'Image height = width.')
flags.DEFINE_list('dtype', ['float32'], 'Compute dtype(s), float32 and/or bfloat16 (weights stay float32).')
flags.DEFINE_bool('cpu_bf16', False, 'On CPU compute bfloat16 anyway (XLA:CPU emulates it; default float32).')
flags.DEFINE_string('compare', None, "'timm': time timm's equivalent train step / eval forward side by side.")
flags.DEFINE_list('timm_variants', ['nchw', 'nhwc'], f'timm variants for --compare, any of {list(compare.VARIANTS)}.')
flags.DEFINE_integer('devices', 1, 'Local devices to pmap over.')
flags.DEFINE_integer('grad_accum', 1, 'Gradient-accumulation micro-batches per step.')
flags.DEFINE_float('clipping', 0.01, 'AGC clipping threshold of the train step.')
flags.DEFINE_list('remat', ['false'], 'Block rematerialisation settings to run: false, true or both.')
flags.DEFINE_list('sam_rho', ['0'], 'SAM radii of the train step, e.g. 0,0.05 (0: no SAM; SAM runs 2 passes).')
flags.DEFINE_integer('warmup', 2, 'Untimed calls after compilation.')
flags.DEFINE_integer('steps', 10, 'Timed calls (at least 10).')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square matmul measuring the machine peak.')
flags.DEFINE_string('dataset', 'imagenet2012', 'Dataset for --what=input.')
flags.DEFINE_string('data_dir', None, 'tfds data dir for --what=input.')
flags.DEFINE_string('mini_imagenet', None, 'Build a realistic miniature ImageNet here and use it for --what=input.')
flags.DEFINE_string('augment', 'none', 'Augmentation for --what=input, e.g. cutmix_mixup_randaugment_405.')
flags.DEFINE_string('out', None, 'Write the JSON results here.')
FLAGS = flags.FLAGS


def _bools(values):
  table = {'false': False, 'true': True}
  if any(v.lower() not in table for v in values):
    raise app.UsageError(f'--remat takes false/true, got {values}')
  return [table[v.lower()] for v in values]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if any(d not in ('float32', 'bfloat16') for d in FLAGS.dtype) or not FLAGS.dtype:
    raise app.UsageError(f'--dtype takes float32 and/or bfloat16, got {FLAGS.dtype}')
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  if FLAGS.compare is not None:
    try:
      summary = compare.run_compare(
          FLAGS.what, FLAGS.models, dtypes=FLAGS.dtype, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size,
          variants=FLAGS.timm_variants, clipping=FLAGS.clipping, warmup=FLAGS.warmup, steps=FLAGS.steps,
          matmul_size=FLAGS.matmul_size, cpu_bf16=FLAGS.cpu_bf16, log=log)
    except (compare.CompareError, ValueError) as e:
      raise app.UsageError(str(e)) from None
    if summary['results']:
      print(compare.format_table(summary['results'], summary['matmul']))
    if summary['ops']:
      print(compare.format_ops_table(summary['ops']))
    _write(summary)
    return
  if len(FLAGS.dtype) > 1:
    raise app.UsageError('several --dtype values need --compare; run once per dtype.')
  data_dir = FLAGS.data_dir
  if FLAGS.mini_imagenet:
    data_dir = benchmark.prepare_mini_imagenet(FLAGS.mini_imagenet)
  summary = benchmark.run_suite(
      FLAGS.what, FLAGS.models, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size, dtype=FLAGS.dtype[0],
      num_devices=FLAGS.devices, grad_accum=FLAGS.grad_accum, clipping=FLAGS.clipping,
      remat=_bools(FLAGS.remat), sam_rho=[float(v) for v in FLAGS.sam_rho], warmup=FLAGS.warmup, steps=FLAGS.steps,
      matmul_size=FLAGS.matmul_size, dataset=FLAGS.dataset, data_dir=data_dir, augment=FLAGS.augment,
      cpu_bf16=FLAGS.cpu_bf16, log=log)
  print(benchmark.format_table(summary['results'], summary['matmul']))
  _write(summary)


def _write(summary):
  if FLAGS.out:
    paths.write_text(FLAGS.out, json.dumps(summary, indent=2))


if __name__ == '__main__':
  host_memory.keep_freed_memory(default=True)   # large steps on CPU: see nfnet_jax.host_memory
  cli.run(main)
