"""scikit-learn's 8×8 handwritten digits (1,797 images, shipped with scikit-learn): no download needed.

Split (deterministic, documented): the 1,797 images are permuted with numpy's default_rng(0); the first
1,497 of that order are 'train', the last 300 'validation'. Images (grey levels 0..16) are scaled to
0..255, upsampled bilinearly to image_size², repeated on 3 channels and normalised with the ImageNet mean
and std like every other dataset. The training order is a pure function of (seed, step): epoch e is
default_rng([seed, e]).permutation of the train split, and step s takes the global examples
[s·B, (s+1)·B) of the concatenated epochs, laid out [global_devices, accum, per_device]; each process
keeps its own devices' rows. No per-image augmentation (MixUp/CutMix happen in the train step).
"""

import functools

import numpy as np

from nfnet_jax.data import layout as layout_lib
from nfnet_jax.data import preprocessing
from nfnet_jax.data.info import DatasetInfo
from nfnet_jax.data.mixing import AugmentSpec

NUM_TRAIN = 1497
NUM_VALIDATION = 300
INFO = DatasetInfo(name="digits", num_classes=10, splits={"train": NUM_TRAIN, "validation": NUM_VALIDATION},
                   train_split="train", eval_split="validation", class_names=[str(d) for d in range(10)])


@functools.lru_cache(maxsize=None)
def _raw():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  images = digits.images[order].astype(np.float32) * (255.0 / 16.0)
  labels = digits.target[order].astype(np.int32)
  return {"train": (images[:NUM_TRAIN], labels[:NUM_TRAIN]),
          "validation": (images[NUM_TRAIN:], labels[NUM_TRAIN:])}


def _upsample_matrix(size: int, src: int = 8) -> np.ndarray:
  """[size, src] bilinear (half-pixel centres, edge-clamped) interpolation weights."""
  pos = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, src - 1)
  frac = pos - lo
  m = np.zeros((size, src), np.float32)
  m[np.arange(size), lo] += 1 - frac
  m[np.arange(size), hi] += frac
  return m


@functools.lru_cache(maxsize=4)
def _split_images(split: str, image_size: int):
  """(normalised float32 [N, S, S, 3], int32 labels [N]) of one split at one size."""
  images, labels = _raw()[split]
  m = _upsample_matrix(image_size)
  grey = np.einsum("ij,njk,lk->nil", m, images, m)
  mean = np.asarray(preprocessing.MEAN_RGB, np.float32)
  std = np.asarray(preprocessing.STDDEV_RGB, np.float32)
  return ((grey[..., None] - mean) / std).astype(np.float32), labels


def _cast(images, dtype):
  return images.astype(dtype) if np.dtype(dtype) != images.dtype else images


def train_iterator(*, global_batch_size: int, image_size: int, spec: AugmentSpec, seed: int,
                   start_step: int, grad_accum_steps: int, dtype, layout: layout_lib.Layout):
  if spec.randaugment:
    raise ValueError("digits has no per-image augmentation: use augment 'none', 'mixup', 'cutmix' or "
                     "'cutmix_mixup' (mixing happens in the train step), not RandAugment")
  per_device = layout_lib.per_device_batch(global_batch_size, layout, grad_accum_steps)
  images, labels = _split_images("train", image_size)
  n = len(labels)
  lo = layout.process_index * layout.local_devices
  perms = {}

  def order(epoch):
    if epoch not in perms:
      perms.clear()
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    return perms[epoch]

  def batches(step):
    while True:
      pos = np.arange(step * global_batch_size, (step + 1) * global_batch_size)
      epochs, within = np.divmod(pos, n)
      idx = np.empty_like(pos)
      for e in np.unique(epochs):
        sel = epochs == e
        idx[sel] = order(int(e))[within[sel]]
      idx = idx.reshape(layout.global_devices, grad_accum_steps, per_device)[lo:lo + layout.local_devices]
      yield {"images": _cast(images[idx], dtype), "labels": labels[idx]}
      step += 1

  return batches(start_step)


def eval_iterator(*, split: str, global_batch_size: int, image_size: int, dtype, layout: layout_lib.Layout):
  INFO.check_split(split)
  per_device = layout_lib.eval_per_device_batch(global_batch_size, layout)
  local_batch = layout.local_devices * per_device
  images, labels = _split_images(split, image_size)
  start, end = layout_lib.shard_range(len(labels), layout)
  return _eval_batches(images, labels, start, end, local_batch, per_device, dtype, layout)


def _eval_batches(images, labels, start, end, local_batch, per_device, dtype, layout):
  for b in range(layout_lib.eval_num_batches(len(labels), layout, local_batch)):
    idx = np.arange(start + b * local_batch, start + (b + 1) * local_batch)
    mask = idx < end
    idx = np.where(mask, idx, start if end > start else 0)
    shape = (layout.local_devices, per_device)
    batch_images = np.where(mask[:, None, None, None], images[idx], 0.0)
    yield {"images": _cast(batch_images, dtype).reshape(shape + images.shape[1:]),
           "labels": np.where(mask, labels[idx], 0).reshape(shape), "mask": mask.reshape(shape),
           "index": np.where(mask, idx, -1).astype(np.int32).reshape(shape)}
