"""Tests for nfnet_jax.flops: the jaxpr MAC counter and the model zoo's FLOP table."""

import functools
import json
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import flops

LAYOUT_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "official_layout"


def _layout(stem):
  path = LAYOUT_DIR / f"{stem}.json"
  if not path.exists():
    pytest.fail(f"official layout {path} not found: clone shared/ beside the repo (…/shared/official_layout).")
  return json.loads(path.read_text())


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
  real = net.init(jax.random.PRNGKey(0), jnp.ones((2, 15, 15, 3)))
  x = jnp.ones((2, 32, 32, 3))
  compiled = jax.jit(net.apply).lower(real, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  macs = flops.count_macs(net.apply, params, x)["total"]
  # XLA counts 2 FLOPs per multiply-add plus a little elementwise work.
  assert macs == pytest.approx(cost["flops"] / 2, rel=0.05)
  assert macs <= cost["flops"] / 2
