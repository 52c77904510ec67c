"""Pretrained vs from-scratch fine-tuning on a PNG folder: digits 0-4 pretrain, digits 5-9 fine-tune.

  python scripts/finetune_study.py --out=runs/finetune_study --seeds=0,1,2 --steps=60 \
      --json=docs/finetune_digits.json --plot=docs/finetune_digits.png

Pretrains --pretrain_config (default configs/digits_pretrain.py) once on digits 0-4, then per seed
fine-tunes with the recipe of --finetune_config (default configs/finetune.py:nf_resnet50; the
network and image sizes are the pretraining run's) on digits 5-9 from that run and from scratch, with the same steps and seed.
Override either config's keys with --pretrain_config.KEY=V / --finetune_config.KEY=V.
"""

import json
import os
import shutil

from absl import app, flags, logging
from ml_collections import config_flags

from nfnet_jax import cli, finetune_study

config_flags.DEFINE_config_file('pretrain_config', 'configs/digits_pretrain.py', 'Pretraining config.')
config_flags.DEFINE_config_file('finetune_config', 'configs/finetune.py:nf_resnet50',
                                'Fine-tuning config (dataset and init_from are set per run).')
flags.DEFINE_string('out', None, 'Folder for the image folders and every run.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Fine-tuning seeds.')
flags.DEFINE_integer('steps', 60, 'Fine-tuning steps of every run.')
flags.DEFINE_integer('eval_every', 5, 'Evaluate every this many steps (and at the end).')
flags.DEFINE_string('json', None, 'Also copy the result JSON here.')
flags.DEFINE_string('plot', None, 'Write the PNG plot of the validation curves here.')
flags.mark_flags_as_required(['out'])
FLAGS = flags.FLAGS

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  result = finetune_study.run(FLAGS.pretrain_config, FLAGS.finetune_config, FLAGS.out,
                              seeds=[int(s) for s in FLAGS.seeds], steps=FLAGS.steps,
                              eval_every=FLAGS.eval_every)
  if FLAGS.json:
    shutil.copyfile(os.path.join(FLAGS.out, 'finetune_study.json'), FLAGS.json)
  if FLAGS.plot:
    finetune_study.plot(result, FLAGS.plot)
  print(json.dumps({k: result[k] for k in ('pretrain', 'pretrained', 'scratch')}, indent=2))


if __name__ == '__main__':
  cli.run(main)
