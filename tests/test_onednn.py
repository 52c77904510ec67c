"""oneDNN convolutions and matrix products (nfnet_jax.onednn) against XLA's, and the fallback without them."""

import os
import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import native_required

from nfnet_jax import layers, onednn, precision


@pytest.fixture
def require_onednn():
  native_required.require(onednn.available(), onednn.reason(), "oneDNN")


def _normal(shape, seed, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(seed), shape).astype(dtype)


def _xla_conv(x, w, stride, padding, groups):
  return jax.lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups,
                                      preferred_element_type=jnp.float32).astype(x.dtype)


GEOMETRIES = [  # (input shape, kernel, out channels, stride, groups, padding)
    ((2, 9, 9, 8), 3, 12, 1, 1, "SAME"),
    ((2, 9, 9, 8), 3, 12, 2, 2, "SAME"),   # odd size, stride 2: SAME pads 0 before, 1 after
    ((2, 8, 8, 6), 1, 6, 2, 3, "SAME"),
    ((1, 7, 7, 4), 3, 8, 2, 1, ((1, 0), (0, 2))),
    ((2, 6, 6, 3), 3, 16, 2, 1, "VALID"),  # the stem's shape of problem: 3 input channels
]


@pytest.mark.parametrize("shape,kernel,out,stride,groups,padding", GEOMETRIES)
def test_conv_equals_xla_in_value_and_gradients(require_onednn, shape, kernel, out, stride, groups,
                                                padding):
  x = _normal(shape, 0)
  w = _normal((kernel, kernel, shape[-1] // groups, out), 1)
  ours = lambda x, w: onednn.conv2d(x, w, stride=(stride, stride), padding=padding, groups=groups)
  ref = lambda x, w: _xla_conv(x, w, (stride, stride), padding, groups)
  y = jax.jit(ours)(x, w)
  np.testing.assert_allclose(y, ref(x, w), rtol=1e-5, atol=1e-5)
  ct = _normal(y.shape, 2)
  grads = jax.grad(lambda x, w: jnp.sum(ours(x, w) * ct), (0, 1))(x, w)
  ref_grads = jax.grad(lambda x, w: jnp.sum(ref(x, w) * ct), (0, 1))(x, w)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)


def test_bf16_conv_rounds_like_xla(require_onednn):
  x, w = _normal((2, 8, 8, 16), 0, jnp.bfloat16), _normal((3, 3, 16, 32), 1, jnp.bfloat16)
  y = onednn.conv2d(x, w)
  assert y.dtype == jnp.bfloat16
  # Both accumulate in float32 and round once, so they differ by at most one bf16 ulp.
  np.testing.assert_allclose(y.astype(np.float32), _xla_conv(x, w, (1, 1), "SAME", 1).astype(np.float32),
                             rtol=2 ** -7, atol=1e-2)


def test_matmul_equals_jnp_in_value_and_gradients(require_onednn):
  a, b, ct = _normal((37, 19), 0), _normal((19, 23), 1), _normal((37, 23), 2)
  np.testing.assert_allclose(onednn.matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda a, b: jnp.sum(onednn.matmul(a, b) * ct), (0, 1))(a, b)
  ref = jax.grad(lambda a, b: jnp.sum((a @ b) * ct), (0, 1))(a, b)
  for g, r in zip(grads, ref):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,groups", [(3, 2, 3), (1, 1, 1), (1, 2, 1), (3, 1, 1)])
def test_ws_conv_on_onednn_equals_split_under_pmap(require_onednn, kernel, stride, groups):
  def loss(params, x, impl):
    model = hk.without_apply_rng(hk.transform(
        lambda x: layers.WSConv2D(12, kernel, stride=stride, feature_group_count=groups,
                                  conv_impl=impl, name="c")(x)))
    return jnp.sum(jnp.sin(model.apply(params, x)))

  devices = jax.local_devices()
  x = _normal((len(devices), 2, 9, 9, 6), 5)
  init = hk.transform(lambda x: layers.WSConv2D(12, kernel, feature_group_count=groups, name="c")(x))
  params = init.init(jax.random.PRNGKey(0), x[0])
  stacked = jax.tree.map(lambda p: jnp.stack([p] * len(devices)), params)
  results = {}
  for impl in ("onednn", "split"):
    grad = jax.pmap(jax.value_and_grad(lambda p, x: loss(p, x, impl), argnums=(0, 1)))
    results[impl] = grad(stacked, x)
  for a, b in zip(jax.tree.leaves(results["onednn"]), jax.tree.leaves(results["split"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_products_scope(require_onednn):
  if not onednn.native_bf16():
    pytest.skip(f"no bf16 hardware for oneDNN here ({onednn.kernel(jnp.bfloat16)})")
  x, w = _normal((2, 8, 8, 16), 0), _normal((3, 3, 16, 32), 1)
  with precision.scope(True):
    y = jax.jit(lambda x, w: layers.conv2d(x, w))(x, w)
  assert y.dtype == jnp.float32
  # The bf16 conv of the rounded operands (float32 accumulation, rounded once), back in float32.
  rounded = lambda v: v.astype(jnp.bfloat16).astype(jnp.float32)
  expected = rounded(_xla_conv(rounded(x), rounded(w), (1, 1), "SAME", 1))
  np.testing.assert_allclose(y, expected, rtol=2 ** -7, atol=1e-2)
  assert np.mean(y == expected) > 0.9
  assert np.mean(y == _xla_conv(x, w, (1, 1), "SAME", 1)) < 0.1  # not the float32 conv
  assert "oneDNN" in precision.note(True, platform="cpu")


def _fresh_python(code: str, **env) -> str:
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                        env={**os.environ, **env})
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def test_turned_off_falls_back_to_xla():
  out = _fresh_python(
      "from nfnet_jax import layers, onednn, precision\n"
      "print(onednn.available(), onednn.reason(), layers.resolve_conv_impl('auto', 1), sep='|')\n"
      "print(precision.note(True, platform='cpu'))\n"
      "try:\n  layers.resolve_conv_impl('onednn', 1)\nexcept ValueError as e:\n  print(e)\n",
      NFNET_JAX_ONEDNN="0")
  available, reason, impl = out.splitlines()[0].split("|")
  assert (available, impl) == ("False", "split")
  assert "NFNET_JAX_ONEDNN=0" in reason
  assert "computing in float32" in out.splitlines()[1]
  assert "conv_impl='onednn': oneDNN is not available (turned off" in out.splitlines()[2]


def test_failed_build_says_why_and_falls_back(tmp_path):
  # A compiler that fails: nothing is cached, the reason names the failure, convs run on XLA.
  out = _fresh_python(
      "import jax.numpy as jnp\nfrom nfnet_jax import layers, onednn\n"
      "print(onednn.available(), onednn.reason(), sep='|')\n"
      "print(layers.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)))[0, 1, 1, 0])\n",
      CXX="false", NFNET_JAX_CACHE=str(tmp_path))
  available, reason = out.splitlines()[0].split("|")
  assert available == "False" and "could not build against oneDNN" in reason
  assert float(out.splitlines()[1]) == 18.0  # 3×3 window of ones over 2 channels
  assert not list(tmp_path.glob("*.so"))


def test_built_library_is_cached(require_onednn, tmp_path):
  code = ("from nfnet_jax import onednn\nimport jax.numpy as jnp\n"
          "print(onednn.available(), onednn.kernel(jnp.float32))\n")
  first = _fresh_python(code, NFNET_JAX_CACHE=str(tmp_path))
  (so,) = tmp_path.glob("onednn_conv-*.so")
  mtime = so.stat().st_mtime_ns
  assert _fresh_python(code, NFNET_JAX_CACHE=str(tmp_path), CXX="false") == first  # no rebuild
  assert so.stat().st_mtime_ns == mtime and first.startswith("True ")
