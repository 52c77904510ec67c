"""Writes a miniature ImageNet in the official ILSVRC2012 tar layout, for tests and benchmarks.

Used by the test fixture (tests/mini_imagenet.py, tests/conftest.py) and by the benchmark's pipeline mode.

The layout is what `tfds`'s `imagenet2012` builder reads from its manual dir:
`ILSVRC2012_img_train.tar` holds one `<synset>.tar` per class, each holding `<synset>_<n>.JPEG`;
`ILSVRC2012_img_val.tar` holds `ILSVRC2012_val_00000001.JPEG`, ... . The builder labels validation
images by zipping their sorted names with the list it ships (`validation_labels.txt`), so validation
images are numbered from 1 and take the shipped labels of lines 1..num_val; the training classes are the
first distinct synsets of that same list, so every validation image belongs to a training class.

Images are class-dependent (colour and stripe orientation) so that a small model can learn them.
"""

import io
import os
import tarfile

import numpy as np

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
TEST_TAR = "ILSVRC2012_img_test.tar"


def shipped_validation_labels():
  """The synsets tfds assigns to ILSVRC2012_val_00000001.JPEG, 00000002, ... (in order)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
  return path.read_text().split()


def _class_synsets(num_classes, val_labels):
  synsets = []
  for s in val_labels:
    if s not in synsets:
      synsets.append(s)
    if len(synsets) == num_classes:
      return synsets
  raise ValueError(f"num_classes={num_classes} is more than the shipped list offers")


def _image(rng, class_index, num_classes, height, width, noise):
  """A JPEG-friendly image: class colour, class stripe angle, smooth random blobs, optional grain."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  hue = 2 * np.pi * class_index / num_classes
  base = 127 + 100 * np.array([np.cos(hue), np.cos(hue + 2.1), np.cos(hue + 4.2)])
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = np.pi * class_index / num_classes
  period = rng.uniform(12, 40)
  stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
  coarse = rng.normal(size=(height // 16 + 2, width // 16 + 2, 3))
  blobs = np.asarray(Image.fromarray(((coarse + 3) * 40).clip(0, 255).astype(np.uint8)).resize(
      (width, height), Image.BICUBIC), np.float32) - 120
  img = base + 50 * stripes[..., None] + 0.6 * blobs
  if noise:
    img = img + rng.normal(scale=noise, size=img.shape)
  return img.clip(0, 255).astype(np.uint8)


def _jpeg(array, quality=90):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_mini_imagenet(manual_dir, *, num_classes=10, train_per_class=4, num_val=10,
                        min_side=40, max_side=120, noise=0.0, seed=0, corrupt_train=(), num_test=0):
  """Writes the two ILSVRC2012 tars into `manual_dir`; returns a description dict.

  Args:
    manual_dir: folder to write into (created).
    num_classes: number of training synsets (the first distinct synsets of tfds's validation list).
    train_per_class: training JPEGs per synset.
    num_val: validation JPEGs (ILSVRC2012_val_00000001.JPEG ... ), labelled by tfds's shipped list.
    min_side, max_side: each image's height and width are drawn uniformly from this range.
    noise: standard deviation of per-pixel grain (0 for small, fast files; 30 for ImageNet-like file sizes).
    seed: makes the files reproducible.
    corrupt_train: training file names (e.g. 'n01751748_1.JPEG') written as undecodable bytes.
    num_test: if > 0, also writes ILSVRC2012_img_test.tar (tfds labels its images -1: no labels).
  """
  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  val_labels = shipped_validation_labels()[:num_val]
  synsets = _class_synsets(num_classes, shipped_validation_labels())
  sizes = lambda: (int(rng.integers(min_side, max_side + 1)), int(rng.integers(min_side, max_side + 1)))
  train_files = {}
  with tarfile.open(os.path.join(manual_dir, TRAIN_TAR), "w") as outer:
    for c, synset in enumerate(synsets):
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode="w") as inner:
        for i in range(train_per_class):
          name = f"{synset}_{i + 1}.JPEG"
          data = _jpeg(_image(rng, c, num_classes, *sizes(), noise))
          if name in corrupt_train:
            data = b"\xff\xd8\xff\xe0 this is not a JPEG " + bytes(64)
          _add(inner, name, data)
          train_files[name] = synset
      _add(outer, f"{synset}.tar", inner_buf.getvalue())
  val_files = {}
  with tarfile.open(os.path.join(manual_dir, VAL_TAR), "w") as tar:
    for i, synset in enumerate(val_labels):
      name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
      c = synsets.index(synset) if synset in synsets else i
      _add(tar, name, _jpeg(_image(rng, c, num_classes, *sizes(), noise)))
      val_files[name] = synset
  if num_test:
    with tarfile.open(os.path.join(manual_dir, TEST_TAR), "w") as tar:
      for i in range(num_test):
        _add(tar, f"ILSVRC2012_test_{i + 1:08d}.JPEG", _jpeg(_image(rng, i, num_classes, *sizes(), noise)))
  return {"synsets": synsets, "train_files": train_files, "val_files": val_files}


def write_realistic_mini_imagenet(manual_dir, *, num_classes=10, train_per_class=50, num_val=50, seed=0):
  """ImageNet-like JPEGs for throughput measurements: sides 300-450 px (mean ≈ 375², like ImageNet's
  ≈ 400×350), grainy content, quality 90, ≈ 90 KB per file (ImageNet's train set averages ≈ 110 KB)."""
  return write_mini_imagenet(manual_dir, num_classes=num_classes, train_per_class=train_per_class,
                             num_val=num_val, min_side=300, max_side=450, noise=30.0, seed=seed)


def build_prepared(root, *, realistic=False, **kwargs):
  """Writes a miniature ImageNet under root/manual and prepares it into root/data with tfds's builder
  (through nfnet_jax.data.imagenet.prepare_imagenet, as scripts/prepare_imagenet.py does).
  realistic=True uses write_realistic_mini_imagenet. Returns (data_dir, manual_dir, description);
  read it as dataset 'imagenet2012' with data_dir=data_dir."""
  from nfnet_jax.data.imagenet import prepare_imagenet  # pylint: disable=g-import-not-at-top
  manual_dir, data_dir = os.path.join(root, "manual"), os.path.join(root, "data")
  writer = write_realistic_mini_imagenet if realistic else write_mini_imagenet
  description = writer(manual_dir, **kwargs)
  prepare_imagenet(manual_dir, data_dir, log=lambda msg: None)
  return data_dir, manual_dir, description
