"""Convert a params file between timm/PyTorch state dicts and our formats (the input format is read off its content).

  python scripts/convert.py --pretrained=eca_nfnet_l0.safetensors --model=eca_nfnet_l0 --to=npz --out=eca_l0.npz
  python scripts/convert.py --pretrained=F0_haiku.npz --model=nfnet_f0 --to=timm --out=dm_nfnet_f0.safetensors
"""


from absl import app, flags, logging

from nfnet_jax import cli, pretrained

flags.DEFINE_string('pretrained', None, 'Input: DeepMind release, our npz, timm .safetensors or PyTorch .pth/.bin.')
flags.DEFINE_string('model', None, "Our model name, e.g. nfnet_f0 (timm's dm_nfnet_f0) or eca_nfnet_l0.")
flags.DEFINE_enum('to', None, ['timm', 'npz'], "Output format: timm's state dict as .safetensors, or our flat npz.")
flags.DEFINE_string('out', None, 'Output file (.safetensors for --to=timm, .npz for --to=npz).')
flags.mark_flags_as_required(['pretrained', 'model', 'to', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  print(pretrained.convert(FLAGS.pretrained, FLAGS.out, model=FLAGS.model, to=FLAGS.to))


if __name__ == '__main__':
  cli.run(main)
