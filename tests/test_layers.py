"""Tests for nfnet_jax.layers: Scaled WS, γ-scaled activations, SE, stochastic depth, bookkeeping."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import layers, onednn, pool_grad
from native_required import require


def _normal(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _ref_conv(x, w, stride=1, groups=1):
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)


def test_standardized_weight_has_zero_mean_and_variance_one_over_fan_in():
  rng = np.random.default_rng(0)
  # Deliberately badly scaled and shifted weights.
  w = 3.0 + 5.0 * rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
  w_hat = np.asarray(layers.standardize_weight(jnp.asarray(w), jnp.ones(32)))
  fan_in = 3 * 3 * 16
  np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(w_hat.var(axis=(0, 1, 2)), 1.0 / fan_in, rtol=1e-4)
  gain = np.linspace(0.5, 2.0, 32).astype(np.float32)
  w_gain = np.asarray(layers.standardize_weight(jnp.asarray(w), jnp.asarray(gain)))
  np.testing.assert_allclose(w_gain, w_hat * gain, rtol=1e-5, atol=1e-7)


def test_standardized_weight_floor_keeps_constant_filters_finite():
  w = jnp.full((1, 1, 4, 2), 0.7)
  w_hat = layers.standardize_weight(w, jnp.ones(2))
  np.testing.assert_array_equal(np.asarray(w_hat), 0.0)


def test_standardization_statistics_are_float32_for_bfloat16_weights():
  rng = np.random.default_rng(1)
  w = (4.0 + 0.05 * rng.standard_normal((3, 3, 8, 4))).astype(np.float32)
  w_bf16 = jnp.asarray(w, jnp.bfloat16)
  out = layers.standardize_weight(w_bf16, jnp.ones(4, jnp.bfloat16))
  assert out.dtype == jnp.float32
  ref = layers.standardize_weight(w_bf16.astype(jnp.float32), jnp.ones(4))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out).var(axis=(0, 1, 2)), 1 / 72, rtol=1e-3)


def _autodiff_standardize(w, gain, eps=1e-4):
  axes = tuple(range(w.ndim - 1))
  n = np.prod(w.shape[:-1])
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(w - mean), axis=axes, keepdims=True)
  return (w - mean) * jax.lax.rsqrt(jnp.maximum(var * n, eps)) * gain


@pytest.mark.parametrize("shape", [(3, 3, 16, 8), (1, 1, 64, 32), (5, 12)])
def test_standardize_weight_gradient_equals_autodiff_of_the_formula(shape):
  w = _normal(shape, 0) * 0.1 + 0.05
  w = w.at[..., 1].set(0.3)  # a constant filter: the eps floor is active there
  gain = jnp.linspace(0.5, 2.0, shape[-1])
  cotangent = _normal(shape, 1)
  out, vjp = jax.vjp(layers.standardize_weight, w, gain)
  ref_out, ref_vjp = jax.vjp(_autodiff_standardize, w, gain)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5, atol=1e-6)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))
  grads = jax.grad(lambda w, g: jnp.sum(layers.standardize_weight(w, g) * cotangent),
                   argnums=(0, 1))(w.astype(jnp.bfloat16), gain.astype(jnp.bfloat16))
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]


@pytest.mark.parametrize("groups,stride", [(1, 1), (4, 2)])
def test_wsconv_matches_conv_with_standardized_weight(groups, stride):
  def f(x):
    return layers.WSConv2D(8, 3, stride=stride, feature_group_count=groups, name="c")(x)

  model = hk.transform(f)
  x = _normal((2, 9, 9, 8), 0)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  assert sorted(params["c"]) == ["bias", "gain", "w"]
  assert params["c"]["w"].shape == (3, 3, 8 // groups, 8)
  np.testing.assert_array_equal(params["c"]["gain"], 1.0)
  np.testing.assert_array_equal(params["c"]["bias"], 0.0)
  params = jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size,
                        params)
  out = jax.jit(model.apply)(params, None, x)
  w_hat = layers.standardize_weight(params["c"]["w"], params["c"]["gain"])
  ref = jax.jit(_ref_conv, static_argnums=(2, 3))(x, w_hat, stride, groups) + params["c"]["bias"]
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_wsconv_fan_in_init_and_unit_output_variance():
  model = hk.transform(lambda x: layers.WSConv2D(256, 3, name="c")(x))
  x = _normal((4, 16, 16, 64), 0)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  assert abs(float(jnp.std(params["c"]["w"])) * np.sqrt(9 * 64) - 1.0) < 0.02
  out = np.asarray(jax.jit(model.apply)(params, None, x))
  # Interior pixels (no zero padding): unit variance is preserved by SWS.
  assert abs(out[:, 1:-1, 1:-1].var() - 1.0) < 0.05


def test_wsconv_runs_in_bfloat16():
  model = hk.transform(lambda x: layers.WSConv2D(16, 3, feature_group_count=2, name="c")(x))
  x = _normal((2, 8, 8, 16), 0)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  apply = jax.jit(model.apply)
  out32 = apply(params, None, x)
  p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  out16 = apply(p16, None, x.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), atol=0.1)


def test_wsconv_rejects_indivisible_groups():
  model = hk.transform(lambda x: layers.WSConv2D(16, 3, feature_group_count=4)(x))
  with pytest.raises(ValueError, match="not divisible"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 6)))


@pytest.mark.parametrize("name", sorted(layers.GAMMAS))
def test_gamma_scaled_activation_has_unit_variance(name):
  x = _normal((1024, 1024), 42)
  y = layers.get_activation(name)(x)
  # Per-example variance across features, averaged: ~1 within sampling error (~0.3%).
  assert abs(float(jnp.mean(jnp.var(y, axis=-1))) - 1.0) < 0.01


def test_estimate_gamma_agrees_with_published_constants():
  for name, published in layers.GAMMAS.items():
    estimated = layers.estimate_gamma(layers._BASE_ACTIVATIONS[name])
    assert abs(estimated / published - 1.0) < 5e-3, (name, estimated, published)
  assert abs(layers.GAMMAS["relu"] - 1.7139588594436646) < 1e-12
  assert abs(layers.GAMMAS["gelu"] - 1.7015043497085571) < 1e-12
  assert abs(layers.GAMMAS["silu"] - 1.7881293296813965) < 1e-12


def test_register_activation_estimates_gamma():
  gamma = layers.register_activation("test_abs", jnp.abs)
  try:
    # Var|x| = 1 - 2/π for x ~ N(0, 1).
    assert abs(gamma - 1 / np.sqrt(1 - 2 / np.pi)) < 0.01
    y = layers.get_activation("test_abs")(_normal((512, 512), 3))
    assert abs(float(jnp.mean(jnp.var(y, axis=-1))) - 1.0) < 0.02
    with pytest.raises(ValueError, match="already exists"):
      layers.register_activation("test_abs", jnp.abs)
  finally:
    del layers._BASE_ACTIVATIONS["test_abs"], layers.GAMMAS["test_abs"]


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match="gelu"):
    layers.get_activation("swishy")
  # The official NF-RegNet default name resolves to silu.
  x = jnp.linspace(-3, 3, 7)
  np.testing.assert_allclose(layers.get_activation("swish")(x),
                             layers.get_activation("silu")(x))


def test_squeeze_excite_gates_with_twice_sigmoid():
  model = hk.transform(lambda x: layers.SqueezeExcite(8, 8, se_ratio=0.5)(x))
  x = _normal((3, 5, 5, 8), 0)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  assert params["squeeze_excite/~/linear"]["w"].shape == (8, 4)
  assert params["squeeze_excite/~/linear_1"]["w"].shape == (4, 8)
  out = jax.jit(model.apply)(params, None, x)
  p0, p1 = params["squeeze_excite/~/linear"], params["squeeze_excite/~/linear_1"]
  x, p0, p1 = (jax.tree.map(np.asarray, t) for t in (x, p0, p1))
  h = np.maximum(x.mean(axis=(1, 2)) @ p0["w"] + p0["b"], 0) @ p1["w"] + p1["b"]
  ref = x * 2 / (1 + np.exp(-h))[:, None, None, :]
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_stochastic_depth_drops_whole_examples_without_rescaling():
  model = hk.transform(lambda x, t: layers.StochasticDepth(0.3)(x, t))
  x = jnp.ones((4000, 2, 2, 3))
  out = np.asarray(jax.jit(model.apply, static_argnums=3)({}, jax.random.PRNGKey(0), x, True))
  per_example = out.reshape(4000, -1)
  # Every example is either untouched (no 1/keep rescaling) or zeroed entirely.
  assert set(np.unique(per_example)) <= {0.0, 1.0}
  assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
  assert abs((per_example[:, 0] == 0).mean() - 0.3) < 0.03
  np.testing.assert_array_equal(model.apply({}, None, x, False), x)


def test_skip_gain_starts_at_zero():
  model = hk.transform(lambda x: layers.skip_gain(x))
  x = jnp.ones((2, 3))
  params = model.init(None, x)
  assert params["~"]["skip_gain"].shape == ()
  np.testing.assert_array_equal(model.apply(params, None, x), 0.0)


def test_residual_betas_reset_at_transitions():
  alpha = 0.2
  betas = layers.residual_betas([2, 3], alpha)
  # Each block sees the variance left by the previous one; transitions reset it to 1 + α².
  expected_var = [1.0, 1 + alpha**2, 1 + 2 * alpha**2, 1 + alpha**2, 1 + 2 * alpha**2]
  np.testing.assert_allclose(betas, 1 / np.sqrt(expected_var))
  np.testing.assert_allclose(layers.expected_variances([2, 3], alpha),
                             [1.04, 1.08, 1.04, 1.08, 1.12])
  np.testing.assert_allclose(layers.stochdepth_rates(4, 0.1), [0.0, 0.025, 0.05, 0.075])


def test_signal_stats_of_known_tensor():
  # Channel 0 constant 2 (mean 2, var 0); channel 1 alternating ±1 (mean 0, var 1).
  x = np.zeros((2, 2, 2, 2), np.float32)
  x[..., 0] = 2.0
  x[..., 1] = np.array([1.0, -1.0] * 4).reshape(2, 2, 2)
  stats = layers.signal_stats(jnp.asarray(x, jnp.bfloat16))
  assert stats["avg_sq_mean"].dtype == jnp.float32
  np.testing.assert_allclose(stats["avg_sq_mean"], 2.0)
  np.testing.assert_allclose(stats["avg_var"], 0.5)


@pytest.mark.parametrize("kernel,stride,groups", [(3, 2, 3), (1, 1, 1), (1, 2, 1), (3, 1, 1)])
def test_split_conv_equals_native_in_value_and_gradient(kernel, stride, groups):
  def loss(params, x, impl):
    model = hk.without_apply_rng(hk.transform(
        lambda x: layers.WSConv2D(12, kernel, stride=stride, feature_group_count=groups,
                                  conv_impl=impl, name="c")(x)))
    return jnp.sum(jnp.sin(model.apply(params, x)))

  x = _normal((2, 9, 9, 6), 5)
  init = hk.transform(
      lambda x: layers.WSConv2D(12, kernel, feature_group_count=groups, name="c")(x))
  params = jax.jit(init.init)(jax.random.PRNGKey(0), x)
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
  (v_native, g_native), (v_split, g_split) = grad(params, x, "native"), grad(params, x, "split")
  np.testing.assert_allclose(v_split, v_native, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_split), jax.tree.leaves(g_native)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_conv_impl_resolution():
  assert layers.resolve_conv_impl("native", 4) == "native"
  assert layers.resolve_conv_impl("split", 4) == "split"
  if jax.default_backend() != "cpu":
    expected = "native"
  else:
    expected = "onednn" if onednn.available() else "split"
  assert layers.resolve_conv_impl("auto", 1) == expected
  assert layers.resolve_conv_impl("auto", 4) == expected
  many = "onednn" if expected == "onednn" else "native"
  assert layers.resolve_conv_impl("auto", layers.MAX_SPLIT_GROUPS + 1) == many
  with pytest.raises(ValueError, match="conv_impl"):
    hk.transform(lambda: layers.WSConv2D(8, 3, conv_impl="fast")).init(None)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,window,stride", [((2, 8, 8, 3), 3, 2), ((2, 7, 9, 2), 3, 2),
                                                 ((1, 6, 5, 4), 2, 2), ((1, 5, 5, 2), 3, 1),
                                                 ((1, 7, 6, 2), 1, 2), ((1, 9, 9, 2), 5, 3)])
@pytest.mark.parametrize("grad", ["default", "xla"])
def test_max_pool_equals_haiku_in_value_and_gradient(shape, window, stride, ties, grad):
  # Ties: values in {0, 1, 2}, so most windows hold several maxima; the gradient goes to the first.
  # 'default' is the native backward on CPU where it is built (pool_grad), 'xla' the fallback.
  if grad == "default" and jax.default_backend() == "cpu":
    require(pool_grad.available(), pool_grad.reason(), "the native max pool gradient")
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, shape) if ties else rng.permutation(np.prod(shape)).reshape(shape)
  x = jnp.asarray(x, jnp.float32)
  ref = lambda x: hk.max_pool(x, (1, window, window, 1), (1, stride, stride, 1), "SAME")
  ours = lambda x: layers.max_pool(x, window=window, stride=stride)
  out, vjp = jax.vjp(ours, x)
  ref_out, ref_vjp = jax.vjp(ref, x)
  np.testing.assert_array_equal(out, ref_out)
  ct = _normal(out.shape, 1)
  dx = vjp(ct)[0] if grad == "default" else layers.max_pool_grad_xla(x, ct, window, stride)
  # Equal but for the order in which overlapping windows' gradients are summed.
  np.testing.assert_allclose(dx, ref_vjp(ct)[0], rtol=1e-6, atol=1e-6)
  assert jnp.count_nonzero(dx) == jnp.count_nonzero(ref_vjp(ct)[0])
  if grad == "default" and pool_grad.supports(x):  # native: summed in the XLA order, same bits
    np.testing.assert_array_equal(dx, layers.max_pool_grad_xla(x, ct, window, stride))


def test_native_max_pool_gradient_in_bf16_and_inside_a_jitted_model_gradient():
  # NF-ResNet-50's stem pool shape at 32 px: bf16 gradients within bf16 rounding of Haiku's
  # (computed in float32 from the same bf16 values), and the jitted vjp of an activation + pool.
  require(pool_grad.available(), pool_grad.reason(), "the native max pool gradient")
  x = jnp.maximum(_normal((2, 16, 16, 64), 0), 0).astype(jnp.bfloat16)  # relu: many tied zeros
  ct = _normal((2, 8, 8, 64), 1).astype(jnp.bfloat16)
  ref = lambda x: hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
  want = jax.vjp(ref, x.astype(jnp.float32))[1](ct.astype(jnp.float32))[0]
  dx = jax.vjp(lambda x: layers.max_pool(x), x)[1](ct)[0]
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_allclose(dx.astype(jnp.float32), want.astype(jnp.bfloat16).astype(jnp.float32),
                             rtol=0, atol=0)  # one rounding of the float32 sum, like the reference
  f = lambda v: jnp.sum(layers.max_pool(jax.nn.relu(v) * 1.7) * ct.astype(jnp.float32))
  g_ref = lambda v: jnp.sum(ref(jax.nn.relu(v) * 1.7) * ct.astype(jnp.float32))
  v = _normal((2, 16, 16, 64), 2)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(v), jax.grad(g_ref)(v), rtol=1e-6, atol=1e-6)
