"""Input pipelines: ImageNet and other tfds datasets, sklearn digits, image folders; NFNet augmentations.

`dataset` is 'digits', 'folder:/path/to/images' (see data/folder.py) or a tfds name.

Public API (the trainer and the benchmark rely on it):
  get_info(dataset, data_dir=None) -> DatasetInfo
  train_iterator(dataset, *, data_dir, global_batch_size, image_size, augment, seed, start_step=0,
                 grad_accum_steps=1, dtype=np.float32) -> endless iterator of
      {'images': [local_devices, grad_accum_steps, per_device, S, S, 3], 'labels': int32 [...]}
  eval_iterator(dataset, *, data_dir, split, global_batch_size, image_size, preprocess='resize_crop_32',
                dtype=np.float32) -> finite iterator of
      {'images': [local_devices, per_device, S, S, 3], 'labels', 'mask', 'index' (position in the
      split, -1 for padding), 'file' (tfds datasets with file names), 'label_set' (multi-hot, for
      datasets whose label is a set, e.g. imagenet2012_real)}; every example of this
      process's shard once, padding rows have mask False; per_device = ceil(global_batch_size /
      global devices) (any batch size works); every process yields the same number of batches.
  parse_augment(augment) -> AugmentSpec;  mix_batch(rng, images, labels, num_classes, spec)
All three take keyword-only `folder_val_fraction` (the held-out fraction of a 'folder:' dataset
without a val/ folder; ignored by the others). Both iterators take keyword-only `process_index`,
`process_count` and `local_devices` (default: jax's)
so that tests and tools can simulate other layouts.
"""

from typing import Optional

import numpy as np

from nfnet_jax.data.info import BadDataError, DatasetInfo
from nfnet_jax.data.layout import Layout, resolve_layout
from nfnet_jax.data.mixing import AugmentSpec, cutmix_boxes, mix_batch, parse_augment

# TensorFlow (preprocessing, the tfds and digits pipelines) loads on first use, so that the train and
# eval steps, which import this package for MixUp/CutMix, run where TensorFlow is not installed.
_PREPROCESSING_NAMES = ("EVAL_PREPROCESS", "MEAN_RGB", "STDDEV_RGB")


def __getattr__(name):
  if name in _PREPROCESSING_NAMES:
    from nfnet_jax.data import preprocessing  # pylint: disable=import-outside-toplevel
    return getattr(preprocessing, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tfds():
  from nfnet_jax.data import tfds_input  # pylint: disable=import-outside-toplevel
  return tfds_input


def _digits():
  from nfnet_jax.data import digits  # pylint: disable=import-outside-toplevel
  return digits

__all__ = ["AugmentSpec", "BadDataError", "DatasetInfo", "Layout", "get_info", "train_iterator",
           "eval_iterator", "parse_augment", "mix_batch", "cutmix_boxes", "MEAN_RGB", "STDDEV_RGB"]


def _folder(dataset):
  """The folder module when `dataset` is 'folder:...' (imported on first use), else None."""
  if not (isinstance(dataset, str) and dataset.startswith("folder:")):
    return None
  from nfnet_jax.data import folder  # pylint: disable=import-outside-toplevel
  return folder


def get_info(dataset: str, data_dir: Optional[str] = None, *,
             folder_val_fraction: float = 0.1) -> DatasetInfo:
  """Classes, splits and sizes of 'digits', an image folder or a prepared tfds dataset (e.g. 'imagenet2012')."""
  if not dataset:
    raise ValueError("no dataset given: set e.g. --config.dataset=folder:/path/to/images, digits or a "
                     "tensorflow-datasets name.")
  if dataset == "digits":
    return _digits().INFO
  if _folder(dataset):
    return _folder(dataset).scan(dataset, folder_val_fraction).info
  return _tfds().get_info(dataset, data_dir)


def _check_common(image_size, dtype):
  if int(image_size) < 1:
    raise ValueError(f"image_size must be positive, got {image_size}")
  if np.dtype(dtype).name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")


def train_iterator(dataset: str, *, data_dir: Optional[str], global_batch_size: int, image_size: int,
                   augment: str, seed: int, start_step: int = 0, grad_accum_steps: int = 1,
                   dtype=np.float32, process_index: Optional[int] = None,
                   process_count: Optional[int] = None, local_devices: Optional[int] = None,
                   folder_val_fraction: float = 0.1):
  """Endless, shuffled, augmented training batches for this process (see the module docstring).

  augment: see `parse_augment`; RandAugment runs here, MixUp/CutMix run in the train step (`mix_batch`).
  global_batch_size must be a multiple of global devices × grad_accum_steps.
  start_step: resume point. For digits and folders the stream continues exactly; for tfds datasets the stream is
  re-seeded from (seed, process, start_step): same distribution, not the same examples.
  dtype: np.float32 or bfloat16 (jnp.bfloat16 / 'bfloat16').
  """
  _check_common(image_size, dtype)
  spec = parse_augment(augment)
  layout = resolve_layout(process_index, process_count, local_devices)
  layout_args = dict(global_batch_size=global_batch_size, image_size=image_size, spec=spec, seed=seed,
                     start_step=start_step, grad_accum_steps=grad_accum_steps, dtype=dtype, layout=layout)
  if dataset == "digits":
    return _digits().train_iterator(**layout_args)
  if _folder(dataset):
    folder = _folder(dataset)
    return folder.train_iterator(folder.scan(dataset, folder_val_fraction), **layout_args)
  info = _tfds().get_info(dataset, data_dir)
  return _tfds().train_iterator(info, data_dir=data_dir, **layout_args)


def eval_iterator(dataset: str, *, data_dir: Optional[str], split: str, global_batch_size: int,
                  image_size: int, preprocess: str = "resize_crop_32", dtype=np.float32,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  local_devices: Optional[int] = None, folder_val_fraction: float = 0.1):
  """Every example of this process's shard of `split` exactly once, padded batches with a mask.

  preprocess: 'resize_crop_32' (bicubic resize to (S+32)², centre crop S; DeepMind's NFNet eval) or
  'crop_resize' (centre crop of 87.5% of the short side, bicubic resize to S²).
  """
  _check_common(image_size, dtype)
  choices = __getattr__("EVAL_PREPROCESS")
  if preprocess not in choices:
    raise ValueError(f"Unknown eval preprocess {preprocess!r}; choose one of {choices}")
  layout = resolve_layout(process_index, process_count, local_devices)
  if dataset == "digits":
    return _digits().eval_iterator(split=split, global_batch_size=global_batch_size,
                                 image_size=image_size, dtype=dtype, layout=layout)
  if _folder(dataset):
    folder = _folder(dataset)
    return folder.eval_iterator(folder.scan(dataset, folder_val_fraction), split=split,
                                global_batch_size=global_batch_size, image_size=image_size,
                                preprocess=preprocess, dtype=dtype, layout=layout)
  info = _tfds().get_info(dataset, data_dir)
  info.check_split(split)
  return _tfds().eval_iterator(info, data_dir=data_dir, split=split, global_batch_size=global_batch_size,
                             image_size=image_size, preprocess=preprocess, dtype=dtype, layout=layout)
