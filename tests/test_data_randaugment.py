"""RandAugment ops in TF: shapes, dtypes, that they change images, and agreement with PIL."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from nfnet_jax.data import randaugment as ra


def _test_image(h=33, w=33, seed=0):
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([x * 200 // w + 20, y * 150 // h + 40, (x + y) * 100 // (h + w) + 60], -1)
  img = img + rng.integers(-20, 21, size=img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ra.OP_NAMES)
def test_each_op_keeps_shape_dtype_and_changes_image(name):
  image = tf.constant(_test_image(32, 40))
  changed = []
  for magnitude in (5, 10):
    fn = ra.op_branches(magnitude)[name]
    if fn is None:  # the identity at this magnitude
      continue
    out = fn(image)
    assert out.shape == image.shape and out.dtype == tf.uint8
    changed.append(not np.array_equal(out.numpy(), image.numpy()))
  assert changed and all(changed)


def test_identity_ops_at_magnitude_5_match_deepmind_mapping():
  ops = ra.op_branches(5)
  # Enhance factor 5/10·1.8 + 0.1 = 1.0: the identity.
  assert all(ops[n] is None for n in ("Color", "Contrast", "Brightness", "Sharpness"))
  assert ra.op_branches(10)["Solarize"] is None  # threshold 256


def test_randaugment_layers_keep_shape_and_vary():
  image = tf.constant(_test_image(24, 24))
  tf.random.set_seed(0)
  outs = [ra.randaugment(image, 4, 5).numpy() for _ in range(12)]
  assert all(o.shape == (24, 24, 3) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) > 6
  with pytest.raises(ValueError, match="uint8"):
    ra.randaugment(tf.cast(image, tf.float32), 2, 5)


def test_randaugment_runs_in_tf_data_graph():
  ds = tf.data.Dataset.from_tensors(tf.constant(_test_image(16, 16))).repeat(8)
  ds = ds.map(lambda im: ra.randaugment(im, 2, 10), num_parallel_calls=2)
  outs = list(ds.as_numpy_iterator())
  assert len(outs) == 8 and all(o.shape == (16, 16, 3) for o in outs)


def _pil(fn, img, *args):
  return np.asarray(fn(Image.fromarray(img), *args))


def test_pixel_ops_match_pil():
  img = _test_image()
  t = tf.constant(img)
  np.testing.assert_array_equal(ra.equalize(t).numpy(), _pil(ImageOps.equalize, img))
  np.testing.assert_array_equal(ra.invert(t).numpy(), _pil(ImageOps.invert, img))
  np.testing.assert_array_equal(ra.posterize(t, 2).numpy(), _pil(ImageOps.posterize, img, 2))
  np.testing.assert_array_equal(ra.solarize(t, 128).numpy(), _pil(ImageOps.solarize, img, 128))
  assert np.abs(ra.autocontrast(t).numpy().astype(int) - _pil(ImageOps.autocontrast, img)).max() <= 1


@pytest.mark.parametrize("op,enhancer", [(ra.brightness, ImageEnhance.Brightness),
                                         (ra.color, ImageEnhance.Color),
                                         (ra.contrast, ImageEnhance.Contrast),
                                         (ra.sharpness, ImageEnhance.Sharpness)])
def test_enhance_ops_match_pil(op, enhancer):
  img = _test_image()
  for factor in (0.3, 1.9):
    ours = op(tf.constant(img), factor).numpy().astype(int)
    theirs = np.asarray(enhancer(Image.fromarray(img)).enhance(factor)).astype(int)
    assert np.abs(ours - theirs).max() <= 3, (op.__name__, factor)


def test_geometry():
  img = _test_image(33, 33)
  t = tf.constant(img)
  rotated = ra.rotate(t, 90.0).numpy()
  assert any(np.array_equal(rotated, np.rot90(img, k)) for k in (1, -1))
  shifted = ra.translate_x(t, 5.0).numpy()
  np.testing.assert_array_equal(shifted[:, :-5], img[:, 5:])
  assert np.all(shifted[:, -5:] == ra.FILL)
  shifted = ra.translate_y(t, -4.0).numpy()
  np.testing.assert_array_equal(shifted[4:], img[:-4])
  sheared = ra.shear_x(t, 0.3).numpy()
  np.testing.assert_array_equal(sheared[0], img[0])  # row 0 does not move under x-shear
  assert np.any(sheared[-1] != img[-1])


def test_cutout_fills_a_square():
  img = np.zeros((40, 40, 3), np.uint8)
  tf.random.set_seed(1)
  out = ra.cutout(tf.constant(img), 6).numpy()
  filled = np.all(out == ra.FILL, axis=-1)
  rows, cols = np.nonzero(filled)
  assert 0 < filled.sum() <= 144
  assert filled.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


@pytest.mark.parametrize("matrix", [[1.0, 0.3, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, -0.3, 1.0, 0.0],
                                    [1.0, 0.0, -50.0, 0.0, 1.0, 0.0], [0.9659, -0.2588, 9.2, 0.2588, 0.9659, -7.1]])
def test_transform_matches_tf_projective_transform(matrix):
  img = _test_image(37, 45)
  ours = ra.transform(tf.constant(img), matrix).numpy()
  theirs = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.constant(img)[None], transforms=tf.constant([matrix + [0.0, 0.0]], tf.float32),
      output_shape=[37, 45], fill_value=128.0, interpolation="NEAREST", fill_mode="CONSTANT")[0].numpy()
  assert np.mean(np.any(ours != theirs, axis=-1)) < 0.005  # ties at exactly .5 may round apart
