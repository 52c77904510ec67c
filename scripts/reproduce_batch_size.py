"""NF-ResNet paper's batch-size robustness at small scale: BN-, NF-, SkipInit- and Fixup-ResNets.

  python scripts/reproduce_batch_size.py --out docs

trains the four models in one shape (NF-ResNet-50's layout, one block per stage, width 1) on 8x8
digits at batch sizes 2, 8, 32 and 256, 200 steps at every batch size, lr = 0.01 · sqrt(B / 256),
seeds 0, 1 and 2, no clipping, and writes OUT/batch_size_robustness.json (every run) and
OUT/batch_size_robustness.png (top-1 vs batch size). Every flag left out keeps the default of
`nfnet_jax.ablation.batch_size_config()`. --quick runs BN and NF at B = 2, seed 0 (two of the default
runs) for tests.
"""
import argparse
import sys

from nfnet_jax import ablation, cli


def _ints(text):
  return tuple(int(v) for v in text.split(',') if v)


def main(argv=None):
  d = ablation.batch_size_config()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--quick', action='store_true', help='BN and NF at B = 2, seed 0')
  p.add_argument('--dataset', default=d.dataset)
  p.add_argument('--data-dir', default=d.data_dir)
  p.add_argument('--image-size', type=int, default=d.image_size)
  p.add_argument('--steps', type=int, default=None, help=f'steps per run (default {d.steps})')
  p.add_argument('--base-lr', type=float, default=d.base_lr,
                 help='lr at B = 256 (scaled by sqrt(B / 256))')
  p.add_argument('--batch-sizes', type=_ints, default=None)
  p.add_argument('--kinds', default=None, help=f'comma-separated, from {",".join(d.kinds)}')
  p.add_argument('--seeds', type=_ints, default=None)
  p.add_argument('--verbose', action='store_true', help=cli.VERBOSE_HELP)
  args = p.parse_args(argv)
  c = ablation.batch_size_config()
  if args.quick:
    c.update(batch_sizes=(2,), seeds=(0,))
    c.kinds = ('bn', 'nf')
  c.update(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
           base_lr=args.base_lr)
  for key, value in (('steps', args.steps), ('batch_sizes', args.batch_sizes),
                     ('seeds', args.seeds),
                     ('kinds', tuple(args.kinds.split(',')) if args.kinds else None)):
    if value is not None:
      c[key] = value
  try:
    ablation.check_config(c)
  except ValueError as e:
    p.error(str(e))
  return cli.guard(lambda: ablation.run_batch_sweep(c, args.out), argv)


if __name__ == '__main__':
  sys.exit(main())
