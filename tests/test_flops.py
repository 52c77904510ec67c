"""Tests for nfnet_jax.flops: the jaxpr MAC counter and the model zoo's FLOP table."""


import haiku as hk
import jax
import jax.numpy as jnp
import pytest

from nfnet_jax import flops
import official_layouts

_layout = official_layouts.load


def _tiny_net(x):
  x = hk.Conv2D(8, 3, stride=2, name="stem")(x)  # SAME: 15x15 -> 8x8
  x = hk.Conv2D(16, 3, feature_group_count=4, name="grouped")(x)
  x = hk.remat(lambda y: hk.Conv2D(16, 1, name="pointwise")(y))(x)
  x = jax.nn.relu(x)
  x = hk.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")  # 8x8 -> 4x4, no MACs
  return hk.Linear(10, name="fc")(jnp.mean(x, axis=(1, 2)))


# Hand count for a batch-2 15x15x3 input.
_TINY_EXPECTED = {
    "conv": 2 * (8 * 8 * 8 * 3 * 9 + 8 * 8 * 16 * (8 // 4) * 9 + 8 * 8 * 16 * 16),
    "dot": 2 * 16 * 10,
}


def _tiny_setup():
  net = hk.without_apply_rng(hk.transform(_tiny_net))
  images = jax.ShapeDtypeStruct((2, 15, 15, 3), jnp.float32)
  params = jax.eval_shape(net.init, jax.random.PRNGKey(0), images)
  return net, params, images


def test_count_macs_matches_hand_count_through_jit_and_remat():
  net, params, images = _tiny_setup()
  got = flops.count_macs(jax.jit(net.apply), params, images)
  assert got == dict(_TINY_EXPECTED, total=sum(_TINY_EXPECTED.values()))


def test_count_macs_multiplies_scan_bodies_and_takes_costliest_cond_branch():

  def f(x, w):
    def body(c, _):
      return jnp.tanh(c @ w), None
    y, _ = jax.lax.scan(body, x, None, length=5)
    return jax.lax.cond(y.sum() > 0, lambda v: v @ w @ w, lambda v: v @ w, y)

  x = jax.ShapeDtypeStruct((3, 4), jnp.float32)
  w = jax.ShapeDtypeStruct((4, 4), jnp.float32)
  assert flops.count_macs(f, x, w) == {"conv": 0, "dot": 5 * 48 + 2 * 48, "total": 7 * 48}


def test_count_macs_agrees_with_xla_cost_analysis():
  net, params, _ = _tiny_setup()
  real = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.ones((2, 15, 15, 3)))
  x = jnp.ones((2, 32, 32, 3))
  compiled = jax.jit(net.apply).lower(real, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  macs = flops.count_macs(net.apply, params, x)["total"]
  # XLA counts 2 FLOPs per multiply-add plus a little elementwise work.
  assert macs == pytest.approx(cost["flops"] / 2, rel=0.05)
  assert macs <= cost["flops"] / 2


# DeepMind's published table (NFNet paper, Table 1 / README): test size, GFLOPs (MACs), params in millions.
_PUBLISHED = {
    "F0": (256, 12.38, 71.5), "F1": (320, 35.54, 132.6), "F2": (352, 62.59, 193.8), "F3": (416, 114.76, 254.9),
    "F4": (512, 215.24, 316.1), "F5": (544, 289.76, 377.2), "F6": (576, 377.28, 438.4),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(_PUBLISHED))
def test_nfnet_flops_and_params_reproduce_published_table(variant):
  official = _layout(f"nfnet_{variant}")
  size, gflops, mparams = _PUBLISHED[variant]
  name = f"nfnet_{variant.lower()}"
  macs = flops.count_flops(name, size)
  assert macs == official["flops_test_imsize"]  # exact, to the multiply-add
  assert round(macs / 1e9, 2) == gflops
  assert round(flops.count_params(name) / 1e6, 1) == mparams
  assert flops.count_params(name) == official["num_params"]
  assert macs == pytest.approx(official["xla_flops_fwd_b1_test_imsize"] / 2, rel=0.02)


def test_nfnet_train_size_count():
  official = _layout("nfnet_F0")
  assert flops.count_flops("nfnet_f0", official["train_imsize"]) == official["flops_train_imsize"]


@pytest.mark.parametrize("variant", ["B0", "B2"])
def test_nf_regnet_fractional_sizes_reproduce_official_counts(variant):
  official = _layout(f"nf_regnet_{variant}")
  name = f"nf_regnet_{variant.lower()}"
  for which in ("train", "test"):
    size = official["flops_imsizes_used"][which]
    assert flops.count_flops(name, size, fractional_sizes=True) == official[f"flops_{which}_imsize"]
  # B2's 272 px test size is not a multiple of 32: the real (padded) network does more work than the table says.
  size = official["test_imsize"]
  exact = flops.count_flops(name, size)
  assert (exact == official["flops_test_imsize"]) == (size % 32 == 0)
  assert exact >= official["flops_test_imsize"]


@pytest.mark.parametrize("depth", [50, 101])
def test_nf_resnet_count_is_right_where_the_official_one_is_not(depth):
  official = _layout(f"nf_resnet_ResNet{depth}")
  macs = flops.count_flops(f"nf_resnet{depth}", 224)
  xla_macs = official["xla_flops_fwd_b1_test_imsize"] / 2  # XLA counts 2 FLOPs per multiply-add
  assert macs == pytest.approx(xla_macs, rel=0.02)
  # DeepMind's counter forgets the stem max-pool (4x the area in every stage) and double-divides the strided
  # shortcut, so its NF-ResNet numbers are several times too large.
  assert official["flops_test_imsize"] > 3 * macs
  if depth == 50:
    assert round(macs / 1e9, 2) == 4.09


@pytest.mark.parametrize("family", ["skipinit_resnet", "fixup_resnet"])
def test_skipinit_and_fixup_resnets_count_the_nf_resnets_convs(family):
  # Same convs and classifier as the NF-ResNet of the same depth (biases, gains and WS are not MACs).
  official = _layout(f"{family}_ResNet50")
  macs = flops.count_flops(f"{family}50", 224)
  assert macs == flops.count_flops("nf_resnet50", 224)
  assert round(macs / 1e9, 2) == 4.09
  assert flops.count_params(f"{family}50") == official["num_params"]
  # XLA skips the zero padding taps of SAME convs, so its count is a little lower; DeepMind's counter
  # has the NF-ResNet one's errors (3.7x too large).
  assert 1.0 < macs / (official["xla_flops_fwd_b1_test_imsize"] / 2) < 1.04
  assert official["flops_test_imsize"] > 3 * macs


def test_bad_arguments_are_refused_before_tracing():
  with pytest.raises(ValueError, match="at least"):
    flops.count_flops("nfnet_f0", 8)
  with pytest.raises(ValueError, match="int image_size"):
    flops.count_flops("nfnet_f0", 224.0)
  with pytest.raises(ValueError, match="nfnet_f0"):
    flops.count_flops("nfnet_f99", 224)
