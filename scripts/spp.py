"""Signal propagation plots: per-block statistics of one or more models, as in the NF-ResNet paper.

  python scripts/spp.py --model nf_resnet600 --model resnet600 --image-size 224 --batch 64 --out DIR

writes DIR/spp.png (three panels against block depth, models overlaid, stage transitions
dotted), DIR/spp.json and DIR/spp.csv. The paper's comparisons:

  --model resnet600 --model resnet600:block_order=relu_bn_conv        (BN-ReLU-Conv vs ReLU-BN-Conv)
  --model nf_resnet600 --model nf_resnet600:use_ws=False               (NF-ResNet with vs without SWS)

Input is unit Gaussian noise unless --dataset names a tfds dataset (or 'digits'); weights are the
initialisation unless --workdir (a training run) or --pretrained (a params file) is given.
"""
import argparse
import sys

from nfnet_jax import cli, spp


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', action='append', required=True,
                 help="registered name, optionally with overrides: 'name:key=value,key=value'; repeat")
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--name', default='spp', help='file stem of the outputs (default spp)')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--seed', type=int, default=0, help='seed of the noise and of the initialisation')
  p.add_argument('--dataset', default=None, help='measure on real images of this dataset')
  p.add_argument('--data-dir', default=None)
  p.add_argument('--split', default=None, help="dataset split (default: the dataset's eval split)")
  p.add_argument('--workdir', default=None, help="a training run's directory: its latest weights")
  p.add_argument('--pretrained', default=None, help='a params file (nfnet_jax.pretrained.load)')
  p.add_argument('--ema', action='store_true', help='with --workdir: the EMA weights')
  p.add_argument('--skipinit-gain', type=float, default=1.0,
                 help='initial SkipInit gain of models that have one, at init (default 1; the '
                      'released value 0 silences every residual branch)')
  p.add_argument('--yscale', choices=('linear', 'log'), default='linear')
  p.add_argument('--verbose', action='store_true', help=cli.VERBOSE_HELP)
  args = p.parse_args(argv)
  return cli.guard(lambda: _run(args), argv)


def _run(args):
  paths = spp.run(args.model, args.out, image_size=args.image_size, batch=args.batch,
                  seed=args.seed, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                  workdir=args.workdir, pretrained=args.pretrained, ema=args.ema,
                  skipinit_gain=args.skipinit_gain, name=args.name, yscale=args.yscale)
  for kind, path in sorted(paths.items()):
    print(f'{kind}: {path}')


if __name__ == '__main__':
  sys.exit(main())
