"""Export a run's params as a flat npz keyed module_path/param_name (what nfnet_jax.pretrained.load reads).

  python scripts/export.py --workdir=runs/quickstart --out=quickstart.npz [--ema]
"""

from absl import app, flags, logging

from nfnet_jax import cli
from nfnet_jax.train import checkpoints

flags.DEFINE_string('workdir', None, 'Training run whose latest checkpoint to export.')
flags.DEFINE_string('out', None, 'Output .npz file.')
flags.DEFINE_bool('ema', False, 'Export the EMA params instead of the raw params.')
flags.DEFINE_integer('step', None, 'Export this checkpoint step instead of the latest.')
flags.mark_flags_as_required(['workdir', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  step = checkpoints.export(FLAGS.workdir, FLAGS.out, ema=FLAGS.ema, step=FLAGS.step)
  print(f"wrote the {'EMA ' if FLAGS.ema else ''}params of step {step} to {FLAGS.out}")


if __name__ == '__main__':
  cli.run(main)
