"""Prepares ImageNet 2012 for nfnet-jax with tensorflow-datasets' own imagenet2012 builder.

  python scripts/prepare_imagenet.py --manual_dir ~/imagenet_tars --data_dir ~/tensorflow_datasets

--manual_dir must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org).
Then train/evaluate with --data_dir pointing at the same --data_dir. Re-running does nothing.
"""

import argparse
import sys

from nfnet_jax import cli
from nfnet_jax.data.imagenet import prepare_imagenet


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--manual_dir", required=True, help="folder with the two ILSVRC2012 tars")
  parser.add_argument("--data_dir", required=True, help="where tfds writes the prepared dataset")
  parser.add_argument("--verbose", action="store_true", help=cli.VERBOSE_HELP)
  args = parser.parse_args(argv)
  return cli.guard(lambda: _prepare(args), argv)


def _prepare(args):
  counts = prepare_imagenet(args.manual_dir, args.data_dir)
  print("imagenet2012 examples per split:")
  for split, n in sorted(counts.items()):
    print(f"  {split:<12} {n:>9,}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
