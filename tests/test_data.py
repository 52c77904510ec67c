"""Input pipelines on a miniature ImageNet prepared by tfds's real builder, and on sklearn digits."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import mini_imagenet as mi
import nfnet_jax.data as data

LOW = (0.0 - np.asarray(data.MEAN_RGB)) / np.asarray(data.STDDEV_RGB)
HIGH = (255.0 - np.asarray(data.MEAN_RGB)) / np.asarray(data.STDDEV_RGB)


def _in_range(images):
  x = np.asarray(images, np.float32)
  return np.all(x >= LOW - 0.02) and np.all(x <= HIGH + 0.02)


def test_info(mini_imagenet):
  info = data.get_info("imagenet2012", mini_imagenet.data_dir)
  assert info.splits == {"train": 40, "validation": 10}
  assert info.num_classes == 1000 and len(info.class_names) == 1000
  assert (info.train_split, info.eval_split) == ("train", "validation")
  assert set(mini_imagenet.synsets) <= set(info.class_names)
  assert data.get_info("imagenet", mini_imagenet.data_dir).name == "imagenet2012"


def test_info_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_set'"):
    data.get_info("no_such_set", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not prepared.*tfds build cifar10"):
    data.get_info("cifar10", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="prepare_imagenet.py"):
    data.get_info("imagenet2012", str(tmp_path))


@pytest.mark.parametrize("dtype", [np.float32, "bfloat16"])
def test_train_batches(mini_imagenet, dtype):
  info = data.get_info("imagenet2012", mini_imagenet.data_dir)
  labels_of_classes = {info.class_names.index(s) for s in mini_imagenet.synsets}
  it = data.train_iterator("imagenet2012", data_dir=mini_imagenet.data_dir, global_batch_size=16,
                           image_size=48, augment="cutmix_mixup_randaugment_405", seed=0,
                           grad_accum_steps=2, dtype=dtype, local_devices=2)
  seen = set()
  for _ in range(8):  # more than 3 epochs of 40 examples: the stream repeats
    batch = next(it)
    assert set(batch) == {"images", "labels"}
    assert batch["images"].shape == (2, 2, 4, 48, 48, 3)
    assert batch["images"].dtype.name == np.dtype(dtype).name
    assert batch["labels"].shape == (2, 2, 4) and batch["labels"].dtype == np.int32
    assert _in_range(batch["images"])
    seen |= set(batch["labels"].ravel().tolist())
  assert seen == labels_of_classes


def test_train_images_without_augmentation_keep_class_colour(mini_imagenet):
  # Each class of the miniature set has its own base colour: a wrong label would show here.
  info = data.get_info("imagenet2012", mini_imagenet.data_dir)
  it = data.train_iterator("imagenet2012", data_dir=mini_imagenet.data_dir, global_batch_size=40,
                           image_size=32, augment="none", seed=1, local_devices=1)
  batch = next(it)
  images = batch["images"].reshape(40, 32, 32, 3) * np.asarray(data.STDDEV_RGB) + np.asarray(data.MEAN_RGB)
  labels = batch["labels"].ravel()
  k = len(mini_imagenet.synsets)
  for label in set(labels.tolist()):
    c = mini_imagenet.synsets.index(info.class_names[label])
    hue = 2 * np.pi * c / k
    expected = 127 + 100 * np.array([np.cos(hue), np.cos(hue + 2.1), np.cos(hue + 4.2)])
    mean = images[labels == label].mean(axis=(0, 1, 2))
    assert np.abs(mean - expected).max() < 40, (label, mean, expected)


@pytest.mark.parametrize("processes,local_devices,per_device", [(1, 1, 3), (1, 4, 1), (2, 2, 2),
                                                                (3, 1, 4), (3, 2, 1)])
def test_eval_visits_each_example_once(mini_imagenet, processes, local_devices, per_device):
  info = data.get_info("imagenet2012", mini_imagenet.data_dir)
  expected = sorted(info.class_names.index(s) for s in mini_imagenet.val_files.values())
  batch_size = processes * local_devices * per_device
  labels, counts = [], []
  for p in range(processes):
    batches = list(data.eval_iterator(
        "imagenet2012", data_dir=mini_imagenet.data_dir, split="validation",
        global_batch_size=batch_size, image_size=24, process_index=p, process_count=processes,
        local_devices=local_devices, preprocess="crop_resize" if p % 2 else "resize_crop_32"))
    counts.append(len(batches))
    for b in batches:
      assert b["images"].shape == (local_devices, per_device, 24, 24, 3)
      assert b["images"].dtype == np.float32 and _in_range(b["images"])
      assert b["mask"].dtype == bool and b["labels"].dtype == np.int32
      labels += b["labels"][b["mask"]].tolist()
  assert len(set(counts)) == 1  # every process runs the same number of eval steps
  assert sorted(labels) == expected  # 10 distinct synsets: each example exactly once


def test_eval_rejects_bad_arguments(mini_imagenet):
  kw = dict(data_dir=mini_imagenet.data_dir, global_batch_size=4, image_size=24, local_devices=4)
  with pytest.raises(ValueError, match="preprocess"):
    data.eval_iterator("imagenet2012", split="validation", preprocess="resize", **kw)
  with pytest.raises(ValueError, match="no split 'valid'"):
    data.eval_iterator("imagenet2012", split="valid", **kw)
  with pytest.raises(ValueError, match="positive"):
    data.eval_iterator("imagenet2012", split="validation", **dict(kw, global_batch_size=0))


def test_eval_batch_size_not_a_multiple_of_devices_is_padded(mini_imagenet):
  batches = list(data.eval_iterator("imagenet2012", data_dir=mini_imagenet.data_dir, split="validation",
                                    global_batch_size=6, image_size=24, local_devices=4))
  assert [b["images"].shape[:2] for b in batches] == [(4, 2)] * 2  # 6 rounds up to 8 per batch
  assert sum(int(b["mask"].sum()) for b in batches) == 10


def test_prepare_script(mini_imagenet, tmp_path, capsys):
  spec = importlib.util.spec_from_file_location(
      "prepare_imagenet", os.path.join(os.path.dirname(__file__), "..", "scripts", "prepare_imagenet.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.main(["--manual_dir", str(tmp_path), "--data_dir", str(tmp_path / "d")]) == 2  # bad input: one line, exit 2 (nfnet_jax.cli)
  err = capsys.readouterr().err
  assert "ILSVRC2012_img_train.tar" in err and str(tmp_path) in err and "image-net.org" in err
  assert script.main(["--manual_dir", mini_imagenet.manual_dir, "--data_dir", mini_imagenet.data_dir]) == 0
  out = capsys.readouterr().out
  assert "already prepared" in out and "nothing to do" in out
  assert "train" in out and "40" in out and "validation" in out


def test_bad_images_and_labels_stop_naming_the_file(tmp_path):
  data_dir, _, _ = mi.build_prepared(str(tmp_path), num_classes=2, train_per_class=3, num_val=2,
                                     num_test=2, corrupt_train=("n09193705_2.JPEG",))
  it = data.train_iterator("imagenet2012", data_dir=data_dir, global_batch_size=2, image_size=16,
                           augment="none", seed=0, local_devices=1)
  with pytest.raises(data.BadDataError, match="n09193705_2.JPEG"):
    for _ in range(6):
      next(it)
  # tfds labels the ImageNet test split -1: using it as an eval split is a bad label, not a silent one.
  with pytest.raises(data.BadDataError, match="Bad label.*ILSVRC2012_test_0000000"):
    list(data.eval_iterator("imagenet2012", data_dir=data_dir, split="test", global_batch_size=2,
                            image_size=16, local_devices=1))


def test_digits_counts_and_eval_once():
  info = data.get_info("digits")
  assert info.num_classes == 10 and info.splits == {"train": 1497, "validation": 300}
  assert sum(info.splits.values()) == 1797
  for processes in (1, 2, 3):
    labels, counts = [], []
    for p in range(processes):
      batches = list(data.eval_iterator("digits", data_dir=None, split="validation", global_batch_size=
                                        processes * 2 * 7, image_size=16, process_index=p,
                                        process_count=processes, local_devices=2))
      counts.append(len(batches))
      for b in batches:
        assert b["images"].shape == (2, 7, 16, 16, 3) and _in_range(b["images"])
        labels += b["labels"][b["mask"]].tolist()
    assert len(labels) == 300 and len(set(counts)) == 1
    assert np.bincount(labels, minlength=10).min() > 15


def _digits_train(**kw):
  args = dict(data_dir=None, global_batch_size=16, image_size=8, augment="cutmix_mixup", seed=3)
  args.update(kw)
  return data.train_iterator("digits", **args)


def test_digits_train_order_depends_only_on_seed_and_step():
  one = _digits_train(local_devices=4, grad_accum_steps=2)
  two = [_digits_train(local_devices=2, grad_accum_steps=2, process_index=p, process_count=2)
         for p in range(2)]
  for _ in range(100):  # over a full epoch boundary (1497 / 16 ≈ 94 steps)
    a = next(one)
    b = [next(t) for t in two]
    assert a["images"].shape == (4, 2, 2, 8, 8, 3)
    np.testing.assert_array_equal(a["labels"], np.concatenate([x["labels"] for x in b]))
    np.testing.assert_array_equal(a["images"], np.concatenate([x["images"] for x in b]))
  resumed = _digits_train(local_devices=4, grad_accum_steps=2, start_step=100)
  np.testing.assert_array_equal(next(resumed)["labels"], next(one)["labels"])
  other_seed = next(_digits_train(local_devices=4, grad_accum_steps=2, seed=4))
  first = next(_digits_train(local_devices=4, grad_accum_steps=2))
  assert not np.array_equal(other_seed["labels"], first["labels"])


def test_digits_epoch_is_a_permutation():
  it = _digits_train(global_batch_size=1497, image_size=8, local_devices=1)
  images = next(it)["images"].reshape(1497, -1)
  assert len({row.tobytes() for row in images}) > 1400  # (a few digits are pixel-identical)
  with pytest.raises(ValueError, match="RandAugment"):
    _digits_train(augment="randaugment_405", local_devices=1)
  with pytest.raises(ValueError, match="multiple of global devices"):
    _digits_train(global_batch_size=6, local_devices=4)


class NfnetTinyPng(tfds.core.GeneratorBasedBuilder):
  """A real (tiny) tfds dataset of PNG images with train/test splits, like cifar10."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=3), "id": tfds.features.Text()}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)), 3)
      yield i, {"image": np.full(size, 40 * (i % 3) + 20, np.uint8), "label": i % 3, "id": f"png{i}"}


def test_other_tfds_dataset_by_name(tmp_path):
  NfnetTinyPng(data_dir=str(tmp_path)).download_and_prepare()
  info = data.get_info("nfnet_tiny_png", str(tmp_path))
  assert (info.num_classes, info.splits, info.eval_split) == (3, {"train": 12, "test": 5}, "test")
  assert not info.is_jpeg
  batch = next(data.train_iterator("nfnet_tiny_png", data_dir=str(tmp_path), global_batch_size=4,
                                   image_size=16, augment="randaugment_205", seed=0, local_devices=2))
  assert batch["images"].shape == (2, 1, 2, 16, 16, 3) and _in_range(batch["images"])
  labels = []
  for b in data.eval_iterator("nfnet_tiny_png", data_dir=str(tmp_path), split="test",
                              global_batch_size=2, image_size=16, local_devices=2):
    labels += b["labels"][b["mask"]].tolist()
    # Each test image is one flat grey level set by its label: a wrong label would show.
    grey = b["images"][..., 0] * data.STDDEV_RGB[0] + data.MEAN_RGB[0]
    np.testing.assert_allclose(grey[b["mask"]].mean(axis=(1, 2)), 40 * b["labels"][b["mask"]] + 20, atol=1)
  assert sorted(labels) == [0, 0, 1, 1, 2]
