"""Train a model from a config: python scripts/train.py --config=configs/quickstart.py --workdir=DIR.

Override any config key with --config.KEY=VALUE. Restarting the same command resumes from the
latest checkpoint in --workdir. For several hosts give --coordinator_address, --num_processes and
--process_id on every host (TPU pods and Slurm are detected without them).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nfnet_jax import data
from nfnet_jax import train
from nfnet_jax.train import distributed

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/nfnet.py:F0.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard logs.')
distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (train.NonFiniteLossError, data.BadDataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
