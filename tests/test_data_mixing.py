"""MixUp/CutMix in jnp and the augment strings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax.data.mixing import AugmentSpec, cutmix_boxes, mix_batch, parse_augment


@pytest.mark.parametrize("text,layers,magnitude", [("cutmix_mixup_randaugment_405", 4, 5),
                                                   ("cutmix_mixup_randaugment_410", 4, 10),
                                                   ("randaugment_415_mixup_cutmix", 4, 15),
                                                   ("randaugment_15", 2, 15)])
def test_parse_augment_levels(text, layers, magnitude):
  spec = parse_augment(text)
  assert (spec.randaugment_layers, spec.randaugment_magnitude) == (layers, magnitude)
  assert spec.mixup_alpha == 0.2
  assert spec.mixing == ("mix" in text)


def test_parse_augment_variants():
  assert parse_augment("none") == AugmentSpec()
  assert parse_augment("") == AugmentSpec()
  assert parse_augment("mixup_0.4") == AugmentSpec(mixup=True, mixup_alpha=0.4)
  assert parse_augment("cutmix") == AugmentSpec(cutmix=True)


@pytest.mark.parametrize("bad", ["randaugment", "randaugment_x", "cutmix_cutmix", "autoaugment",
                                 "mixup_randaugment_400", None])
def test_parse_augment_rejects(bad):
  with pytest.raises(ValueError, match="augment|RandAugment|magnitude|randaugment"):
    parse_augment(bad)


def _batch(b=8, h=12, w=10):
  # Image i is constant i + 1 everywhere: any pixel tells which sources it mixes.
  images = jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))
  labels = jnp.arange(b)  # distinct labels: a target row tells the weights directly
  return images, labels


def test_mix_batch_mixup_half_cutmix_half():
  images, labels = _batch()
  out, targets = jax.jit(mix_batch, static_argnums=(3, 4))(
      jax.random.PRNGKey(0), images, labels, 11, parse_augment("cutmix_mixup"))
  assert out.shape == images.shape and out.dtype == images.dtype
  assert targets.shape == (8, 11)
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
  b = 8
  for i in range(b):
    own, partner = float(targets[i, i]), float(targets[i, b - 1 - i])
    assert own + partner == pytest.approx(1.0, abs=1e-6)
    pixels = np.asarray(out[i])
    if i < b // 2:  # MixUp: every pixel is the same convex combination
      np.testing.assert_allclose(pixels, own * (i + 1) + partner * (b - i), rtol=1e-5)
    else:  # CutMix: pixels are from one source or the other; the partner weight is its area
      from_partner = np.isclose(pixels, b - i)
      assert np.all(from_partner | np.isclose(pixels, i + 1))
      assert from_partner[..., 0].mean() == pytest.approx(partner, abs=1e-6)


def test_mixup_weights_follow_beta():
  images, labels = _batch(b=256, h=2, w=2)
  _, targets = mix_batch(jax.random.PRNGKey(1), images, labels, 256, parse_augment("mixup"))
  lam = np.asarray(targets[np.arange(256), np.arange(256)])
  # Beta(0.2, 0.2) puts most mass near 0 and 1 and has mean 1/2.
  assert np.mean((lam > 0.1) & (lam < 0.9)) < 0.5
  assert abs(lam.mean() - 0.5) < 0.1


def test_no_mixing_is_one_hot_and_keeps_bfloat16():
  images, labels = _batch()
  images = images.astype(jnp.bfloat16)
  out, targets = mix_batch(jax.random.PRNGKey(0), images, labels, 8, parse_augment("randaugment_405"))
  assert out is images
  np.testing.assert_array_equal(targets, np.eye(8))
  out, _ = mix_batch(jax.random.PRNGKey(0), images, labels, 8, parse_augment("cutmix_mixup"))
  assert out.dtype == jnp.bfloat16


def test_cutmix_box_area_matches_mask():
  mask, area = cutmix_boxes(jax.random.PRNGKey(3), 64, 17, 23)
  np.testing.assert_allclose(np.asarray(mask).mean(axis=(1, 2)), area, rtol=1e-6)
  assert 0.0 <= float(area.min()) and float(area.max()) <= 1.0
  assert float(area.std()) > 0.05  # the boxes vary
