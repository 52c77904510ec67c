"""Evaluate a training run or a params file on its eval sets (every example counted once).

  python scripts/evaluate.py --config=configs/quickstart.py --workdir=runs/quickstart
  python scripts/evaluate.py --config=configs/nfnet.py:F0 --pretrained=F0_haiku.npz \
      --config.data_dir=$TFDS_DATA_DIR --evals=val,real,v2 --out=f0.json
  python scripts/evaluate.py ... --image_sizes=224,256,288,320 --out=f0.json   # resolution sweep
  python scripts/evaluate.py ... --evals=val --predictions=val.jsonl           # per-example top-5

Prints a table (top-1/top-5 of the params and, for a run, the EMA params, per eval set of
config.evals) and writes the full result as JSON to --out and WORKDIR/eval.json.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from nfnet_jax import evaluate
from nfnet_jax.train import distributed

config_flags.DEFINE_config_file('config', None, 'Config file the model was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training run to evaluate (its latest checkpoint).')
flags.DEFINE_string('pretrained', None, 'A params file instead: DeepMind release or exported npz.')
flags.DEFINE_list('evals', None, 'Eval sets of config.evals to score (default: all that are prepared).')
flags.DEFINE_list('image_sizes', None, 'Resolution sweep: score every eval set at each test size.')
flags.DEFINE_string('predictions', None, 'Write every example\'s top-5 to this JSONL file.')
flags.DEFINE_string('out', None, 'Also write the JSON result here.')
distributed.define_flags()
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  try:
    sizes = [int(s) for s in FLAGS.image_sizes] if FLAGS.image_sizes else None
  except ValueError:
    print(f'error: --image_sizes={",".join(FLAGS.image_sizes)} must be integers, e.g. 224,256,288.',
          file=sys.stderr)
    sys.exit(2)
  try:
    result = evaluate.evaluate_run(FLAGS.config, workdir=FLAGS.workdir, pretrained=FLAGS.pretrained,
                                   evals=FLAGS.evals, image_sizes=sizes, predictions=FLAGS.predictions,
                                   out=FLAGS.out)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    print(evaluate.results_table(result))
    if 'sweep' in result:
      print(f'\nTop-1 (%) by test size (plot: {result["sweep"]["plot"]}):\n{result["sweep"]["table"]}')


if __name__ == '__main__':
  app.run(main)
