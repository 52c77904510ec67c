"""Classify images: top-5 classes with probabilities (ImageNet names for 1000-class models).

  python scripts/classify.py --pretrained=F0_haiku.npz --model=nfnet_f0 cat.jpg dog.png
  python scripts/classify.py --workdir=runs/quickstart digit.png
"""

import sys

from absl import app, flags, logging

from nfnet_jax import cli, evaluate

flags.DEFINE_string('workdir', None, 'A training run (its latest checkpoint).')
flags.DEFINE_string('pretrained', None, 'A params file: DeepMind release or exported npz.')
flags.DEFINE_string('model', None, 'Model name (required with --pretrained), e.g. nfnet_f0.')
flags.DEFINE_bool('ema', True, 'With --workdir: use the EMA params (default) or the raw params.')
flags.DEFINE_integer('image_size', None, "Input size (default: the run's / variant's test size).")
flags.DEFINE_integer('top_k', 5, 'How many classes to print per image.')
FLAGS = flags.FLAGS


def main(argv):
  logging.set_verbosity(logging.WARNING)
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files.')
  if FLAGS.top_k < 1:
    raise app.UsageError(f'--top_k={FLAGS.top_k} must be >= 1.')
  _, net, params, model_state, names, size = evaluate.load_classifier(
      workdir=FLAGS.workdir, pretrained=FLAGS.pretrained, model=FLAGS.model, ema=FLAGS.ema,
      image_size=FLAGS.image_size)
  results = evaluate.classify_files(paths, net, params, model_state, class_names=names,
                                    image_size=FLAGS.image_size or size, top_k=FLAGS.top_k)
  failed = 0
  for path, (top, error) in zip(paths, results):
    if error is not None:
      print(f'error: {path}: {error}', file=sys.stderr)
      failed += 1
      continue
    print(path)
    for name, prob in top:
      print(f'  {prob:7.2%}  {name}')
  if failed:
    print(f'error: {failed} of {len(paths)} images could not be classified (see above).', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
