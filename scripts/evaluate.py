"""Evaluate a training run or a params file on a whole split (every example counted once).

  python scripts/evaluate.py --config=configs/quickstart.py --workdir=runs/quickstart
  python scripts/evaluate.py --config=configs/nfnet.py:F0 --pretrained=F0_haiku.npz \
      --config.data_dir=$TFDS_DATA_DIR --out=f0.json

Prints and writes JSON with top1, top5, loss and num_examples for the params and (for a run) the
EMA params, at the config's eval_image_size (default: the variant's test size).
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from nfnet_jax import cli, evaluate
from nfnet_jax.train import distributed

config_flags.DEFINE_config_file('config', None, 'Config file the model was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training run to evaluate (its latest checkpoint).')
flags.DEFINE_string('pretrained', None, 'A params file instead: DeepMind release or exported npz.')
flags.DEFINE_string('split', None, "Split to score (default: the dataset's validation split).")
flags.DEFINE_string('out', None, 'Also write the JSON result here.')
distributed.define_flags()
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  result = evaluate.evaluate_run(FLAGS.config, workdir=FLAGS.workdir, pretrained=FLAGS.pretrained,
                                 split=FLAGS.split, out=FLAGS.out)
  print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == '__main__':
  cli.run(main)
