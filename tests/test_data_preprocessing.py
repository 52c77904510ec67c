"""Per-image preprocessing: Inception crop statistics and fallback, eval views, normalisation."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from nfnet_jax.data import preprocessing as pp


def _jpeg(h, w):
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1)
  buf = io.BytesIO()
  Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=95)
  return tf.constant(buf.getvalue())


def test_random_crop_area_and_aspect():
  encoded = _jpeg(200, 300)
  shapes = np.array([pp.decode_and_random_crop(encoded, 64).shape[:2] for _ in range(300)])
  area = shapes[:, 0] * shapes[:, 1] / (200 * 300)
  aspect = shapes[:, 1] / shapes[:, 0]
  assert area.min() >= 0.07 and area.max() <= 1.0
  assert aspect.min() >= 0.74 and aspect.max() <= 1.35
  assert 0.3 < area.mean() < 0.7  # uniform over [0.08, 1] where the aspect allows
  assert len({tuple(s) for s in shapes}) > 100


def test_random_crop_falls_back_to_centre_crop():
  # A 16×400 strip: no window with aspect 3/4..4/3 covers 8% of it, so every try fails.
  encoded = _jpeg(16, 400)
  side = int(16 * 64 / (64 + 32))
  for _ in range(5):
    assert pp.decode_and_random_crop(encoded, 64).shape == (side, side, 3)


def test_train_image_views():
  encoded = _jpeg(120, 90)
  plain = pp.train_image(encoded, 32)
  assert plain.shape == (32, 32, 3) and plain.dtype == tf.float32
  assert float(tf.reduce_min(plain)) >= 0.0 and float(tf.reduce_max(plain)) <= 255.0
  augmented = pp.train_image(encoded, 32, 4, 10)
  assert augmented.shape == (32, 32, 3) and augmented.dtype == tf.uint8


def test_eval_views():
  encoded = _jpeg(100, 160)
  resized = tf.image.resize(tf.io.decode_jpeg(encoded), [56, 56], method="bicubic")
  expected = tf.clip_by_value(resized, 0, 255)[16:40, 16:40]
  np.testing.assert_allclose(pp.eval_image(encoded, 24, "resize_crop_32"), expected, atol=1e-4)
  # crop_resize: the central 87.5% square of the short side (87 px of 100), then resize.
  window = tf.io.decode_jpeg(encoded)[7:94, 37:124]
  expected = tf.clip_by_value(tf.image.resize(window, [24, 24], method="bicubic"), 0, 255)
  # (decoding only a window of a JPEG may differ from decode-then-slice by a fraction of a level.)
  np.testing.assert_allclose(pp.eval_image(encoded, 24, "crop_resize"), expected, atol=0.5)
  with pytest.raises(ValueError, match="resize_crop_32"):
    pp.eval_image(encoded, 24, "center")


def test_normalize():
  pixels = tf.constant([pp.MEAN_RGB, [0.0, 0.0, 0.0]], tf.float32)
  out = pp.normalize(pixels).numpy()
  np.testing.assert_allclose(out[0], 0.0, atol=1e-5)
  np.testing.assert_allclose(out[1], -np.asarray(pp.MEAN_RGB) / np.asarray(pp.STDDEV_RGB), rtol=1e-5)
  assert pp.normalize(pixels, tf.bfloat16).dtype == tf.bfloat16
