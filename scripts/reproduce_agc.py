"""Small-scale AGC ablation (NFNet paper, Sec. 4.1) and NF vs BN batch-size sensitivity.

  python scripts/reproduce_agc.py --out docs

trains a tiny NF-ResNet (no clipping, global-norm clipping, AGC at λ = 0.01 … 0.16) and a tiny
BN-ResNet on 16x16 digits at several batch sizes with lr = base_lr · B / 256, and writes
OUT/agc_ablation.json (every run) and OUT/agc_ablation.png (top-1 vs batch size with diverged
runs marked; top-1 vs λ; NF vs BN at batch sizes from 2). Every flag left out keeps the default
of `nfnet_jax.ablation.get_config()`; --dataset takes any prepared tfds dataset.
"""
import argparse
import sys

from nfnet_jax import ablation, cli


def _ints(text):
  return tuple(int(v) for v in text.split(','))


def _floats(text):
  return tuple(float(v) for v in text.split(','))


def main(argv=None):
  d = ablation.get_config()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--dataset', default=d.dataset)
  p.add_argument('--data-dir', default=d.data_dir)
  p.add_argument('--image-size', type=int, default=d.image_size)
  p.add_argument('--epochs', type=float, default=d.epochs)
  p.add_argument('--base-lr', type=float, default=d.base_lr, help='peak lr per 256 examples')
  p.add_argument('--warmup-epochs', type=float, default=d.warmup_epochs)
  p.add_argument('--batch-sizes', type=_ints, default=d.batch_sizes,
                 help='comma-separated batch sizes of the AGC ablation')
  p.add_argument('--thresholds', type=_floats, default=d.agc_thresholds,
                 help='comma-separated AGC thresholds')
  p.add_argument('--global-norm', type=float, default=d.global_norm)
  p.add_argument('--sensitivity-batch-sizes', type=_ints, default=d.sensitivity_batch_sizes,
                 help='comma-separated batch sizes of the NF vs BN comparison')
  p.add_argument('--seed', type=int, default=d.seed)
  p.add_argument('--verbose', action='store_true', help=cli.VERBOSE_HELP)
  args = p.parse_args(argv)
  c = ablation.get_config()
  c.update(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
           epochs=args.epochs, base_lr=args.base_lr, warmup_epochs=args.warmup_epochs,
           batch_sizes=args.batch_sizes, agc_thresholds=args.thresholds,
           global_norm=args.global_norm, sensitivity_batch_sizes=args.sensitivity_batch_sizes,
           seed=args.seed)
  try:
    ablation.check_config(c)
  except ValueError as e:
    p.error(str(e))
  return cli.guard(lambda: ablation.run_sweep(c, args.out), argv)


if __name__ == '__main__':
  sys.exit(main())
