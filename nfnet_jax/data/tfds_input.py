"""tensorflow-datasets input: ImageNet (imagenet2012) and other image-classification datasets by name.

Bad data: the pipeline stops. An example whose label is outside [0, num_classes) raises `BadDataError`
naming it (its `file_name` feature, or its index); an image that fails to decode stops the iterator with
`BadDataError` naming every undecodable file of this process's shard, found by one decode pass over the
shard (a few minutes on a full ImageNet shard). Nothing is skipped, so no label is ever silently wrong and
evaluation counts stay exact.
"""

import functools
import os
from typing import Iterator, Optional

import numpy as np

from nfnet_jax import extras
from nfnet_jax import paths
from nfnet_jax.data import layout as layout_lib
from nfnet_jax.data import preprocessing
from nfnet_jax.data.info import BadDataError, DatasetInfo
from nfnet_jax.data.mixing import AugmentSpec

tf = extras.require("tensorflow", "tfds datasets (nfnet_jax.data)")
tfds = extras.require("tensorflow_datasets", "tfds datasets (nfnet_jax.data)")

ALIASES = {"imagenet": "imagenet2012"}
AUTOTUNE = tf.data.AUTOTUNE


def _data_dir(data_dir):
  return paths.expand(data_dir) if data_dir else None


@functools.lru_cache(maxsize=None)
def _builder(name: str, data_dir: Optional[str]):
  name = ALIASES.get(name, name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown dataset {name!r}: neither 'digits' nor a tensorflow-datasets name "
                     f"(e.g. imagenet2012, cifar10, imagenette). {str(e).splitlines()[0]}") from None
  if not builder.is_prepared():
    where = data_dir or "tfds's default data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    how = ("run `python scripts/prepare_imagenet.py --manual_dir DIR_WITH_TARS --data_dir DATA_DIR`"
           if name == "imagenet2012" else f"run `tfds build {name} --data_dir DATA_DIR` where it can download")
    raise FileNotFoundError(f"Dataset {name!r} is not prepared in {where}: {how}, then pass that --data_dir.")
  return builder


def get_info(name: str, data_dir: Optional[str] = None) -> DatasetInfo:
  builder = _builder(name, _data_dir(data_dir))
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  label, label_set_key = info.features[label_key], None
  if isinstance(label, tfds.features.Sequence) and isinstance(label.feature, tfds.features.ClassLabel):
    # A set of labels per image (imagenet2012_real): its single label is the other class-label feature.
    singles = [k for k, f in info.features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not singles:
      raise ValueError(f"Dataset {name!r}: {label_key!r} is a label set and no single label feature exists")
    label_set_key, label_key = label_key, singles[0]
    label = info.features[label_key]
  if not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(f"Dataset {name!r}: feature {label_key!r} is not a class label")
  splits = {k: v.num_examples for k, v in info.splits.items()}
  eval_split = "validation" if "validation" in splits else "test"
  name_key = next((k for k in ("file_name", "filename", "id") if k in info.features), None)
  fmt = getattr(info.features[image_key], "encoding_format", None)
  # The name as given keeps a builder config ('imagenet_v2/threshold-0.7') for later reads.
  return DatasetInfo(name=ALIASES.get(name, name), num_classes=label.num_classes, splits=splits,
                     train_split="train", eval_split=eval_split, class_names=list(label.names),
                     image_key=image_key, label_key=label_key, name_key=name_key,
                     label_set_key=label_set_key, is_jpeg=(fmt == "jpeg"))


def _usable_cpus() -> int:
  """CPUs this process may run on (taskset / cgroup cpusets), not the machine's count."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _options(deterministic: bool):
  """tf.data knobs (README, "Input throughput" gives the reasons)."""
  options = tf.data.Options()
  options.deterministic = deterministic
  # A pool of its own, sized to the CPUs we may use, so the pipeline never waits on TF's
  # inter-op pool that the train step's host work (and JAX's) also use.
  options.threading.private_threadpool_size = max(_usable_cpus(), 2)
  # One thread per element: parallelism comes from many images in flight, not within one op.
  options.threading.max_intra_op_parallelism = 1
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  return options


def _read(info: DatasetInfo, data_dir, split: str, *, shuffle_seed=None):
  builder = _builder(info.name, _data_dir(data_dir))
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  return builder.as_dataset(split=split, decoders={info.image_key: tfds.decode.SkipDecoding()},
                            shuffle_files=shuffle_seed is not None, read_config=read_config)


def _checked_label(example, info: DatasetInfo, start: int, index):
  """The int32 label; stops with the example's name when it is outside [0, num_classes)."""
  label = tf.cast(example[info.label_key], tf.int32)
  name = example[info.name_key] if info.name_key else tf.strings.format(
      "record {} (in read order, from {})", (index, start))
  ok = tf.logical_and(label >= 0, label < info.num_classes)
  with tf.control_dependencies([tf.debugging.Assert(ok, [
      "Bad label in dataset", info.name, "for", name, "label", label, "num_classes", info.num_classes])]):
    return tf.identity(label)


def find_undecodable(info: DatasetInfo, data_dir, split: str):
  """Names of the examples in `split` whose image does not decode (one decode pass)."""
  ds = _read(info, data_dir, split).enumerate()
  key = info.name_key

  def name(i, ex):
    return ex[key] if key else tf.strings.as_string(i)

  def decode(i, ex):
    img = tf.io.decode_image(ex[info.image_key], channels=3, expand_animations=False)
    return name(i, ex), tf.shape(img)[0]

  all_names = [n.decode() for n in ds.map(lambda i, ex: name(i, ex)).as_numpy_iterator()]
  good = {n.decode() for n, _ in ds.map(decode, num_parallel_calls=AUTOTUNE).ignore_errors()
          .as_numpy_iterator()}
  return [n for n in all_names if n not in good]


def _guarded(iterator, info: DatasetInfo, data_dir, split: str):
  """Re-raises TensorFlow data errors as BadDataError naming the culprit."""
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      if "Bad label" in e.message:
        raise BadDataError(e.message.split("\n")[0]) from None
      bad = find_undecodable(info, data_dir, split)
      if not bad:
        raise
      raise BadDataError(
          f"{len(bad)} image(s) of {info.name} {split} fail to decode: {', '.join(bad[:20])}"
          f"{' ...' if len(bad) > 20 else ''}. Remove or replace them and prepare the dataset again."
      ) from None
    yield batch


def _numpy(batch):
  return {k: v.numpy() for k, v in batch.items()}


def train_iterator(info: DatasetInfo, *, data_dir, global_batch_size: int, image_size: int,
                   spec: AugmentSpec, seed: int, start_step: int, grad_accum_steps: int, dtype,
                   layout: layout_lib.Layout) -> Iterator[dict]:
  per_device = layout_lib.per_device_batch(global_batch_size, layout, grad_accum_steps)
  local_batch = layout.local_devices * grad_accum_steps * per_device
  start, end = layout_lib.shard_range(info.splits[info.train_split], layout)
  if end <= start:
    raise ValueError(f"Process {layout.process_index} has no training examples: {info.name} has only "
                     f"{info.splits[info.train_split]} for {layout.process_count} processes")
  # Resuming draws a fresh, equally distributed stream: the shuffle seed depends on start_step.
  seed_seq = np.random.SeedSequence([seed, layout.process_index, start_step])
  shuffle_seed = int(seed_seq.generate_state(1)[0] % (2**31 - 1))
  tf_dtype = tf.bfloat16 if np.dtype(dtype).name == "bfloat16" else tf.dtypes.as_dtype(dtype)
  split = f"{info.train_split}[{start}:{end}]"

  ds = _read(info, data_dir, split, shuffle_seed=shuffle_seed).enumerate()
  ds = ds.shuffle(min(end - start, max(10 * local_batch, 1024), 20_000), seed=shuffle_seed,
                  reshuffle_each_iteration=True).repeat()

  def parse(index, example):
    image = preprocessing.train_image(example[info.image_key], image_size, spec.randaugment_layers,
                                      spec.randaugment_magnitude, info.is_jpeg, spec.inception_crop)
    # Normalising per image (while it is in cache) is cheaper than over the whole batch.
    return {"images": preprocessing.normalize(image, tf_dtype),
            "labels": _checked_label(example, info, start, index)}

  def finish(batch):
    shape = [layout.local_devices, grad_accum_steps, per_device]
    return {"images": tf.reshape(batch["images"], shape + [image_size, image_size, 3]),
            "labels": tf.reshape(batch["labels"], shape)}

  ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=False)
  ds = ds.batch(local_batch, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=False)
  ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=False)
  ds = ds.with_options(_options(deterministic=False)).prefetch(AUTOTUNE)
  return _guarded(map(_numpy, iter(ds)), info, data_dir, split)


def eval_iterator(info: DatasetInfo, *, data_dir, split: str, global_batch_size: int, image_size: int,
                  preprocess: str, dtype, layout: layout_lib.Layout) -> Iterator[dict]:
  per_device = layout_lib.eval_per_device_batch(global_batch_size, layout)
  local_batch = layout.local_devices * per_device
  num_examples = info.check_split(split)
  start, end = layout_lib.shard_range(num_examples, layout)
  num_batches = layout_lib.eval_num_batches(num_examples, layout, local_batch)
  tf_dtype = tf.bfloat16 if np.dtype(dtype).name == "bfloat16" else tf.dtypes.as_dtype(dtype)
  shard = f"{split}[{start}:{end}]"

  def parse(index, example):
    image = preprocessing.eval_image(example[info.image_key], image_size, preprocess, info.is_jpeg)
    row = {"images": preprocessing.normalize(image, tf_dtype),
           "labels": _checked_label(example, info, start, index), "mask": tf.constant(True),
           "index": tf.cast(start + index, tf.int32)}
    if info.name_key:
      name = example[info.name_key]
      row["file"] = name if name.dtype == tf.string else tf.strings.as_string(name)
    if info.label_set_key:
      labels = tf.cast(example[info.label_set_key], tf.int32)
      row["label_set"] = tf.reduce_any(tf.one_hot(labels, info.num_classes, on_value=True, off_value=False,
                                                  axis=-1, dtype=tf.bool), axis=0)
    return row

  pad_row = {"images": tf.zeros([image_size, image_size, 3], tf_dtype), "labels": tf.constant(0, tf.int32),
             "mask": tf.constant(False), "index": tf.constant(-1, tf.int32)}
  if info.name_key:
    pad_row["file"] = tf.constant("")
  if info.label_set_key:
    pad_row["label_set"] = tf.zeros([info.num_classes], tf.bool)
  padding = tf.data.Dataset.from_tensors(pad_row).repeat(num_batches * local_batch - (end - start))

  def finish(batch):
    shape = [layout.local_devices, per_device]
    return {k: tf.reshape(v, shape + v.shape[1:].as_list()) for k, v in batch.items()}

  ds = _read(info, data_dir, shard).enumerate() if end > start else None
  ds = ds.map(parse, num_parallel_calls=AUTOTUNE).concatenate(padding) if ds is not None else padding
  ds = ds.batch(local_batch).map(finish, num_parallel_calls=AUTOTUNE)
  ds = ds.with_options(_options(deterministic=True)).prefetch(AUTOTUNE)
  return _guarded(map(_numpy, iter(ds)), info, data_dir, shard)
