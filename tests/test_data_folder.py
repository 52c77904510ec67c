"""The 'folder:' dataset on PNG/JPEG/BMP/GIF folders written here: splits, class names, decoding,
bad files, empty classes, per-host sharding and exact-once evaluation."""

import os

import numpy as np
import pytest
from PIL import Image

from nfnet_jax import data as data_lib
from nfnet_jax.data import folder as folder_lib
from nfnet_jax.data.preprocessing import MEAN_RGB, STDDEV_RGB

FORMATS = ('png', 'jpg', 'bmp', 'gif')


def write(root, classes, per_class, *, mode='RGB', value=None):
  """per_class images per class, cycling through the formats; pixel value 40 + 50 * class."""
  for k, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      fill = value if value is not None else 40 + 50 * k
      size = (10 + i % 4, 12)
      if mode == 'RGBA':
        image = Image.new('RGBA', size, (fill, fill, fill, 0))
      else:
        image = Image.new(mode, size, fill if mode == 'L' else (fill, fill, fill))
      ext = 'png' if mode == 'RGBA' else FORMATS[i % len(FORMATS)]   # JPEG has no alpha
      image.save(os.path.join(root, name, f'img{i:03d}.{ext}'))


def pixel_class(images):
  """Recovers the class from the (uniform) normalised image: value = 40 + 50 k."""
  value = images[..., 0].mean(axis=(-1, -2)) * STDDEV_RGB[0] + MEAN_RGB[0]
  return np.rint((value - 40) / 50).astype(int)


def test_train_and_val_folders_with_class_names_and_exact_eval(tmp_path):
  write(tmp_path / 'train', ['zebra', 'ant', 'moth'], 5)
  write(tmp_path / 'val', ['zebra', 'ant', 'moth'], 3)
  (tmp_path / 'train' / 'ant' / 'notes.txt').write_text('not an image')
  os.makedirs(tmp_path / 'train' / '.hidden')
  dataset = f'folder:{tmp_path}'
  info = data_lib.get_info(dataset)
  assert info.class_names == ['ant', 'moth', 'zebra'] and info.num_classes == 3
  assert info.splits == {'train': 15, 'validation': 9} and info.eval_split == 'validation'
  # Every validation image once over two processes, labels matching the folders.
  labels, classes = [], []
  for process in range(2):
    for batch in data_lib.eval_iterator(dataset, data_dir=None, split='validation',
                                        global_batch_size=4, image_size=16, process_index=process,
                                        process_count=2, local_devices=2):
      mask = batch['mask'].reshape(-1)
      labels += list(batch['labels'].reshape(-1)[mask])
      classes += list(pixel_class(batch['images'].reshape(-1, 16, 16, 3))[mask])
  assert sorted(labels) == [0] * 3 + [1] * 3 + [2] * 3
  # 'ant' (label 0) was written as class 1 (value 90), 'moth' as 2, 'zebra' as 0.
  assert [{0: 1, 1: 2, 2: 0}[l] for l in labels] == classes


def test_held_out_fraction_is_fixed_stratified_and_disjoint(tmp_path):
  write(tmp_path, ['a', 'b'], 10)
  first = folder_lib.scan(f'folder:{tmp_path}', 0.3)
  folder_lib.scan.cache_clear()
  again = folder_lib.scan(f'folder:{tmp_path}', 0.3)
  assert first.splits['validation'][0] == again.splits['validation'][0]
  train, val = (set(first.splits[s][0]) for s in ('train', 'validation'))
  assert not train & val and len(train | val) == 20
  assert list(np.bincount(first.splits['validation'][1])) == [3, 3]
  assert data_lib.get_info(f'folder:{tmp_path}', folder_val_fraction=0.3).splits == {
      'train': 14, 'validation': 6}


def test_grayscale_and_alpha_become_rgb(tmp_path):
  write(tmp_path / 'grey', ['g'], 4, mode='L', value=200)
  write(tmp_path / 'alpha', ['g'], 4, mode='RGBA', value=200)
  for sub in ('grey', 'alpha'):
    dataset = f'folder:{tmp_path / sub}'
    batch = next(data_lib.train_iterator(dataset, data_dir=None, global_batch_size=2, image_size=8,
                                         augment='none', seed=0, local_devices=1,
                                         folder_val_fraction=0.5))
    rgb = batch['images'] * np.asarray(STDDEV_RGB) + np.asarray(MEAN_RGB)
    assert batch['images'].shape == (1, 1, 2, 8, 8, 3)
    np.testing.assert_allclose(rgb, 200, atol=1.5)


def test_every_bad_file_is_named_before_training(tmp_path):
  write(tmp_path, ['a', 'b'], 4)
  (tmp_path / 'a' / 'empty.jpg').write_bytes(b'')
  good = (tmp_path / 'b' / 'img000.png').read_bytes()
  (tmp_path / 'b' / 'cut.png').write_bytes(good[:len(good) // 2])
  with pytest.raises(data_lib.BadDataError) as e:
    data_lib.get_info(f'folder:{tmp_path}')
  message = str(e.value)
  assert '2 file(s)' in message and 'empty.jpg' in message and 'cut.png' in message


def test_layout_errors(tmp_path):
  write(tmp_path / 'ok', ['a'], 2)
  os.makedirs(tmp_path / 'ok' / 'b')
  with pytest.raises(ValueError, match=r'class folder\(s\) hold no .* images: .*ok/b'):
    data_lib.get_info(f'folder:{tmp_path / "ok"}')
  os.makedirs(tmp_path / 'flat')
  (tmp_path / 'flat' / 'x.png').write_bytes(b'')
  with pytest.raises(ValueError, match='has no class sub-folders'):
    data_lib.get_info(f'folder:{tmp_path / "flat"}')
  write(tmp_path / 'split' / 'train', ['a', 'b'], 2)
  write(tmp_path / 'split' / 'validation', ['a', 'c'], 2)
  with pytest.raises(ValueError, match=r"only in train \['b'\], only in validation \['c'\]"):
    data_lib.get_info(f'folder:{tmp_path / "split"}')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    data_lib.get_info(f'folder:{tmp_path / "nowhere"}')


def test_per_host_training_batches_are_the_global_batch_and_resume_exactly(tmp_path):
  write(tmp_path, ['a', 'b', 'c'], 6)
  dataset = f'folder:{tmp_path}'
  common = dict(data_dir=None, global_batch_size=8, image_size=8, augment='none', seed=3)

  def labels_of(start_step, steps, **layout):
    it = data_lib.train_iterator(dataset, start_step=start_step, **common, **layout)
    return [next(it)['labels'] for _ in range(steps)]

  whole = labels_of(0, 4, local_devices=4, process_count=1, process_index=0)
  hosts = [labels_of(0, 4, local_devices=2, process_count=2, process_index=p) for p in range(2)]
  for step in range(4):
    np.testing.assert_array_equal(np.concatenate([h[step] for h in hosts]), whole[step])
  resumed = labels_of(2, 2, local_devices=4, process_count=1, process_index=0)
  np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[2:]))
  # The first 15 examples are one epoch: every training image (5 per class) once.
  assert list(np.bincount(np.concatenate([w.reshape(-1) for w in whole])[:15])) == [5, 5, 5]


def test_nocrop_trains_on_the_whole_image(tmp_path):
  os.makedirs(tmp_path / 'a')
  half = np.zeros((16, 16), np.uint8)
  half[:, 8:] = 240
  for i in range(4):
    Image.fromarray(half).save(tmp_path / 'a' / f'{i}.png')
  batch = next(data_lib.train_iterator(f'folder:{tmp_path}', data_dir=None, global_batch_size=3,
                                       image_size=16, augment='nocrop', seed=0, local_devices=1,
                                       folder_val_fraction=0.25))
  grey = batch['images'][..., 0] * STDDEV_RGB[0] + MEAN_RGB[0]
  # Both halves are always there (flipped or not), so every image's mean is the file's.
  np.testing.assert_allclose(grey.mean(axis=(-1, -2)), 120, atol=2)
