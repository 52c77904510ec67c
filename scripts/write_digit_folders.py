"""Write scikit-learn's digits as PNG class folders: OUT/train/<digit>/*.png and OUT/val/<digit>/*.png.

  python scripts/write_digit_folders.py --out=data/digits_5_9 --digits=5,6,7,8,9

The split is nfnet_jax.data.digits' fixed one; images are 32x32 grey PNGs (8x8 upsampled
bilinearly). Train on the folder with --config.dataset=folder:OUT.
"""

from absl import app, flags

from nfnet_jax import cli, finetune_study

flags.DEFINE_string('out', None, 'Folder to write.')
flags.DEFINE_list('digits', ['5', '6', '7', '8', '9'], 'Digits to write, comma-separated.')
flags.DEFINE_integer('image_size', 32, 'Side of the written PNGs.')
flags.mark_flags_as_required(['out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  digits = sorted({int(d) for d in FLAGS.digits})
  if not digits or not all(0 <= d <= 9 for d in digits):
    raise app.UsageError(f'--digits must be digits 0-9, got {FLAGS.digits}.')
  counts = finetune_study.write_digit_folders(FLAGS.out, digits, FLAGS.image_size)
  print(f"wrote {counts['train']} train and {counts['validation']} val PNGs of digits "
        f"{','.join(map(str, digits))} to {FLAGS.out}")


if __name__ == '__main__':
  cli.run(main)
