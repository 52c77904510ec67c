"""Small-scale AGC ablation (NFNet paper, Sec. 4.1): the same number of steps at every batch size.

  python scripts/reproduce_agc.py --out docs

trains a tiny NF-ResNet (no clipping, global-norm clipping, AGC at λ = 0.01, 0.04 and 0.16) and
a tiny BN-ResNet on 8x8 digits at batch sizes 4, 16, 64 and 256 with lr = 1.6 · B / 256, 200 steps
each, seeds 0, 1 and 2, and writes OUT/agc_ablation.json (every run) and OUT/agc_ablation.png (top-1 vs batch size
with diverged runs marked; top-1 vs λ; NF vs BN). Every flag left out keeps the default of
`nfnet_jax.ablation.get_config()`; --dataset takes any prepared tfds dataset. --quick runs B = 256 only
(no clipping, AGC 0.01, BN), seed 0, for 100 steps, for tests.
"""
import argparse
import sys

from nfnet_jax import ablation, cli


def _ints(text):
  return tuple(int(v) for v in text.split(',') if v)


def _floats(text):
  return tuple(float(v) for v in text.split(',') if v)


def main(argv=None):
  d = ablation.get_config()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--quick', action='store_true', help='B=256 only: no clipping, AGC 0.01, BN; 100 steps')
  p.add_argument('--dataset', default=d.dataset)
  p.add_argument('--data-dir', default=d.data_dir)
  p.add_argument('--image-size', type=int, default=d.image_size)
  p.add_argument('--steps', type=int, default=None, help=f'steps per run (default {d.steps})')
  p.add_argument('--warmup-steps', type=int, default=None)
  p.add_argument('--base-lr', type=float, default=d.base_lr, help='peak lr per 256 examples')
  p.add_argument('--batch-sizes', type=_ints, default=None,
                 help='comma-separated batch sizes of the AGC ablation')
  p.add_argument('--thresholds', type=_floats, default=None,
                 help='comma-separated AGC thresholds')
  p.add_argument('--global-norm', type=float, default=d.global_norm)
  p.add_argument('--sensitivity-batch-sizes', type=_ints, default=d.sensitivity_batch_sizes,
                 help='comma-separated extra batch sizes of the NF vs BN comparison')
  p.add_argument('--seeds', type=_ints, default=None, help=f'comma-separated (default {d.seeds})')
  p.add_argument('--verbose', action='store_true', help=cli.VERBOSE_HELP)
  args = p.parse_args(argv)
  c = ablation.get_config()
  if args.quick:
    c.update(batch_sizes=(256,), agc_thresholds=(0.01,), global_norm=None, steps=100,
             warmup_steps=10, seeds=(0,))
  c.update(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
           base_lr=args.base_lr, global_norm=None if args.quick else args.global_norm,
           sensitivity_batch_sizes=args.sensitivity_batch_sizes)
  for key, value in (('steps', args.steps), ('warmup_steps', args.warmup_steps), ('seeds', args.seeds),
                     ('batch_sizes', args.batch_sizes), ('agc_thresholds', args.thresholds)):
    if value is not None:
      c[key] = value
  try:
    ablation.check_config(c)
  except ValueError as e:
    p.error(str(e))
  return cli.guard(lambda: ablation.run_sweep(c, args.out), argv)


if __name__ == '__main__':
  sys.exit(main())
