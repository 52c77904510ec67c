"""Train a model from a config: python scripts/train.py --config=configs/quickstart.py --workdir=DIR.

Override any config key with --config.KEY=VALUE. Restarting the same command resumes from the
latest checkpoint in --workdir. For several hosts give --coordinator_address, --num_processes and
--process_id on every host (TPU pods and Slurm are detected without them).

--dry_run checks a config for another machine without running it: with --dry_run_devices=256
--dry_run_processes=32 it validates the config for that topology, compiles one per-device train
step on abstract shapes, and prints the batch layout, steps, epochs, XLA's per-device memory
estimate and the paths it would use (--dry_run_memory_gb: fail if the estimate exceeds it).
"""

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from nfnet_jax import cli, train
from nfnet_jax.train import distributed

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/nfnet.py:F0.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard logs.')
flags.DEFINE_integer('resume_step', None, 'Resume from this kept checkpoint instead of the latest; '
                     'the later ones are moved to WORKDIR/set_aside/ (nothing is deleted).')
flags.DEFINE_bool('allow_config_change', False, 'Resume although settings such as batch_size, the '
                  'schedule or optimizer.lr changed (logged); model/optimizer/shape changes are refused.')
flags.DEFINE_bool('dry_run', False, 'Check the config for --dry_run_devices; run nothing.')
flags.DEFINE_integer('dry_run_devices', None, 'Devices of the target (default: this machine).')
flags.DEFINE_integer('dry_run_processes', 1, 'Processes (hosts) of the target.')
flags.DEFINE_float('dry_run_memory_gb', None, 'Device memory of the target, in GiB.')
flags.DEFINE_bool('dry_run_compile', True, 'Compile the step (memory estimate); false: lower only.')
distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if FLAGS.dry_run:
    from nfnet_jax.train import dry_run  # pylint: disable=import-outside-toplevel
    report = dry_run.dry_run(FLAGS.config, FLAGS.workdir,
                             devices=FLAGS.dry_run_devices or jax.device_count(),
                             processes=FLAGS.dry_run_processes, memory_gb=FLAGS.dry_run_memory_gb,
                             compile_step=FLAGS.dry_run_compile)
    print(dry_run.format_report(report))
    return
  distributed.initialize_from_flags()
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir, resume_step=FLAGS.resume_step,
                           allow_config_change=FLAGS.allow_config_change)


if __name__ == '__main__':
  cli.run(main)
