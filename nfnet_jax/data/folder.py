"""Your own images: dataset='folder:/path', one sub-folder per class (JPEG, PNG, BMP, GIF files).

Layout: /path/train/<class>/* and /path/val/<class>/* (or validation/) when /path/train exists,
else /path/<class>/* with a held-out fraction `val_fraction` of every class as 'validation'. The
held-out files are chosen per class from the sorted file names with numpy's default_rng([0, k]) for
the k-th class, so the split never depends on the run's seed, the host or the file system's
listing order. Class names are the sub-folder names in sorted order; label k is the k-th name.
Files with other extensions and hidden entries are ignored. Images decode to RGB (grayscale is
repeated, alpha dropped, a GIF's first frame kept).

Before anything trains every file is decoded once (in parallel); undecodable or empty files raise
`BadDataError` naming all of them. An empty class folder, a folder without class sub-folders and
train/val class lists that differ are ValueErrors.

Training order, as for digits: epoch e is default_rng([seed, e]).permutation of the train files,
step s takes global examples [s·B, (s+1)·B) laid out [global_devices, accum, per_device], and each
process reads only its own devices' rows, so resuming at a step continues the same order. The
augmentations are those of tfds datasets (Inception crop, flip, RandAugment; MixUp/CutMix in the
train step). Evaluation reads every file of this process's contiguous shard once, padded with
mask False.
"""

import dataclasses
import functools
from typing import Tuple

import numpy as np
import tensorflow as tf

from nfnet_jax import paths as paths_lib
from nfnet_jax.data import layout as layout_lib
from nfnet_jax.data import preprocessing
from nfnet_jax.data.info import BadDataError, DatasetInfo
from nfnet_jax.data.mixing import AugmentSpec

PREFIX = "folder:"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VAL_DIRS = ("val", "validation")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Folder:
  """A scanned image folder: class names and (paths, labels) per split."""
  root: str
  class_names: Tuple[str, ...]
  splits: dict  # 'train' / 'validation' -> (tuple of paths, int32 labels)
  info: DatasetInfo


def _entries(directory):
  return sorted(e for e in paths_lib.listdir(directory) if not e.startswith("."))


def _classes(directory):
  return [e for e in _entries(directory) if paths_lib.isdir(paths_lib.join(directory, e))]


def _images(directory, classes):
  """(paths, labels) of every image file under directory/<class>/, sorted; errors on empty classes."""
  paths, labels, empty = [], [], []
  for k, name in enumerate(classes):
    sub = paths_lib.join(directory, name)
    files = [paths_lib.join(sub, f) for f in _entries(sub)
             if f.lower().endswith(EXTENSIONS) and not paths_lib.isdir(paths_lib.join(sub, f))]
    if not files:
      empty.append(sub)
    paths += files
    labels += [k] * len(files)
  if empty:
    raise ValueError(f"{len(empty)} class folder(s) hold no {'/'.join(EXTENSIONS)} images: "
                     f"{', '.join(empty)}. Add images or remove the folder(s).")
  return paths, np.asarray(labels, np.int32)


def _hold_out(paths, labels, fraction):
  """Splits every class's files into train and a fixed, seeded validation fraction."""
  train, val = [], []
  for k in np.unique(labels):
    idx = np.flatnonzero(labels == k)
    n_val = int(round(fraction * len(idx))) if len(idx) > 1 else 0
    n_val = min(max(n_val, 1 if len(idx) > 1 else 0), len(idx) - 1)
    chosen = set(np.random.default_rng([0, int(k)]).permutation(len(idx))[:n_val].tolist())
    for j, i in enumerate(idx):
      (val if j in chosen else train).append(i)
  pick = lambda ids: (tuple(paths[i] for i in sorted(ids)), labels[sorted(ids)])
  return pick(train), pick(val)


def find_undecodable(paths):
  """The paths whose file is empty or does not decode as an image (one parallel decode pass)."""
  ds = tf.data.Dataset.from_tensor_slices(list(paths))
  decode = lambda p: (p, tf.shape(tf.io.decode_image(tf.io.read_file(p), channels=3,
                                                      expand_animations=False))[0])
  good = {p.decode() for p, _ in ds.map(decode, num_parallel_calls=AUTOTUNE).ignore_errors()
          .as_numpy_iterator()}
  return [p for p in paths if p not in good]


@functools.lru_cache(maxsize=8)
def scan(dataset: str, val_fraction: float = 0.1) -> Folder:
  """Reads the folder layout of 'folder:/path' and checks every image; see the module docstring."""
  root = paths_lib.absolute((dataset[len(PREFIX):]))
  if not dataset[len(PREFIX):]:
    raise ValueError("'folder:' needs a path, e.g. dataset='folder:/data/my_images'.")
  if not paths_lib.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist.")
  train_dir = paths_lib.join(root, "train")
  val_dir = None
  if paths_lib.isdir(train_dir):
    val_dir = next((paths_lib.join(root, d) for d in VAL_DIRS if paths_lib.isdir(paths_lib.join(root, d))),
                   None)
  else:
    train_dir = root
  classes = _classes(train_dir)
  if not classes:
    raise ValueError(f"{train_dir} has no class sub-folders: put each class's images in "
                     f"{train_dir}/<class name>/ (or use {root}/train/<class>/ and {root}/val/<class>/).")
  paths, labels = _images(train_dir, classes)
  if val_dir is not None:
    val_classes = _classes(val_dir)
    if val_classes != classes:
      only_train = sorted(set(classes) - set(val_classes))
      only_val = sorted(set(val_classes) - set(classes))
      raise ValueError(f"the classes of {train_dir} and {val_dir} differ: only in train "
                       f"{only_train}, only in {paths_lib.basename(val_dir)} {only_val}. Both need "
                       "the same class folders.")
    train, val = (tuple(paths), labels), _images(val_dir, classes)
    val = (tuple(val[0]), val[1])
  else:
    if isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
      raise ValueError(f"folder_val_fraction={val_fraction!r} must be in (0, 1) when {root} has no "
                       "val/ or validation/ folder.")
    train, val = _hold_out(paths, labels, val_fraction)
  if not len(val[0]):
    raise ValueError(f"{root}: no validation images (a held-out fraction {val_fraction} of classes "
                     "with a single image is empty); add images or a val/ folder.")
  bad = find_undecodable(train[0] + val[0])
  if bad:
    raise BadDataError(f"{len(bad)} file(s) in {root} are empty or do not decode as images: "
                       f"{', '.join(bad)}. Remove or replace them.")
  info = DatasetInfo(name=PREFIX + root, num_classes=len(classes),
                     splits={"train": len(train[0]), "validation": len(val[0])},
                     train_split="train", eval_split="validation", class_names=list(classes),
                     is_jpeg=False)
  return Folder(root=root, class_names=tuple(classes), splits={"train": train, "validation": val},
                info=info)


def _tf_dtype(dtype):
  return tf.bfloat16 if np.dtype(dtype).name == "bfloat16" else tf.dtypes.as_dtype(dtype)


def _by_format(encoded, fn):
  """fn(is_jpeg) on the encoded bytes: JPEGs decode only their crop window, other formats fully."""
  return tf.cond(tf.io.is_jpeg(encoded), lambda: fn(True), lambda: fn(False))


def train_iterator(folder: Folder, *, global_batch_size: int, image_size: int, spec: AugmentSpec,
                   seed: int, start_step: int, grad_accum_steps: int, dtype,
                   layout: layout_lib.Layout):
  per_device = layout_lib.per_device_batch(global_batch_size, layout, grad_accum_steps)
  local_batch = layout.local_devices * grad_accum_steps * per_device
  paths, labels = folder.splits["train"]
  n = len(paths)
  lo = layout.process_index * layout.local_devices

  def local_rows():
    perms, step = {}, start_step
    while True:
      pos = np.arange(step * global_batch_size, (step + 1) * global_batch_size)
      epochs, within = np.divmod(pos, n)
      idx = np.empty_like(pos)
      for e in np.unique(epochs):
        if int(e) not in perms:
          perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(n)}
        idx[epochs == e] = perms[int(e)][within[epochs == e]]
      yield idx.reshape(layout.global_devices, -1)[lo:lo + layout.local_devices].reshape(-1)
      step += 1

  paths_t, labels_t, tf_dtype = tf.constant(paths), tf.constant(labels), _tf_dtype(dtype)

  def parse(i):
    encoded = tf.io.read_file(paths_t[i])
    image = _by_format(encoded, lambda jpeg: tf.cast(preprocessing.train_image(
        encoded, image_size, spec.randaugment_layers, spec.randaugment_magnitude, jpeg,
        spec.inception_crop), tf.float32))
    return {"images": preprocessing.normalize(image, tf_dtype), "labels": labels_t[i]}

  def finish(batch):
    shape = [layout.local_devices, grad_accum_steps, per_device]
    return {"images": tf.reshape(batch["images"], shape + [image_size, image_size, 3]),
            "labels": tf.reshape(batch["labels"], shape)}

  ds = tf.data.Dataset.from_generator(local_rows, output_signature=tf.TensorSpec([local_batch], tf.int64))
  ds = ds.unbatch().map(parse, num_parallel_calls=AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).map(finish).prefetch(AUTOTUNE)
  return ({k: v.numpy() for k, v in b.items()} for b in ds)


def eval_iterator(folder: Folder, *, split: str, global_batch_size: int, image_size: int,
                  preprocess: str, dtype, layout: layout_lib.Layout):
  folder.info.check_split(split)
  paths, labels = folder.splits[split]
  per_device = layout_lib.eval_per_device_batch(global_batch_size, layout)
  local_batch = layout.local_devices * per_device
  start, end = layout_lib.shard_range(len(paths), layout)
  num_batches = layout_lib.eval_num_batches(len(paths), layout, local_batch)
  pad = num_batches * local_batch - (end - start)
  tf_dtype = _tf_dtype(dtype)

  def parse(path, label, mask):
    def image():
      encoded = tf.io.read_file(path)
      return _by_format(encoded, lambda jpeg: preprocessing.eval_image(
          encoded, image_size, preprocess, jpeg))
    pixels = tf.cond(mask, image, lambda: tf.zeros([image_size, image_size, 3], tf.float32))
    return {"images": preprocessing.normalize(pixels, tf_dtype) * tf.cast(mask, tf_dtype),
            "labels": label, "mask": mask}

  def finish(batch):
    shape = [layout.local_devices, per_device]
    return {"images": tf.reshape(batch["images"], shape + [image_size, image_size, 3]),
            "labels": tf.reshape(batch["labels"], shape), "mask": tf.reshape(batch["mask"], shape)}

  ds = tf.data.Dataset.from_tensor_slices((
      list(paths[start:end]) + [""] * pad,
      np.concatenate([labels[start:end], np.zeros(pad, np.int32)]).astype(np.int32),
      np.arange(end - start + pad) < end - start))
  ds = ds.map(parse, num_parallel_calls=AUTOTUNE).batch(local_batch).map(finish).prefetch(AUTOTUNE)
  return ({k: v.numpy() for k, v in b.items()} for b in ds)
