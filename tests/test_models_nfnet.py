"""Tests for NFNets, NF-RegNets and the model registry (small images, CPU)."""


import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import models
import official_layouts

ALPHA = 0.2


_layout = official_layouts.load


def _random_params(shapes, seed=0):
  """Cheap stand-in for init: N(0, 1) kernels (WS rescales them), unit gains, small biases."""
  rng = np.random.default_rng(seed)

  def make(name, s):
    if name in ("gain", "skip_gain"):
      return np.ones(s.shape, np.float32)
    if name == "w":
      return rng.standard_normal(s.shape, dtype=np.float32)
    return 0.01 * rng.standard_normal(s.shape, dtype=np.float32)

  return {m: {n: make(n, s) for n, s in v.items()} for m, v in shapes.items()}


@pytest.mark.parametrize("name", ["nfnet_f0", "nfnet_f1plus", "nf_regnet_b0", "nf_regnet_b3"])
def test_param_layout_matches_official(name):
  spec = models.get_spec(name)
  layout = _layout(spec.official_layout)
  kwargs = {k: v for k, v in layout["kwargs"].items() if k != "num_classes"}
  assert kwargs.pop("variant").replace("+", "plus") == spec.default_kwargs["variant"].replace(
      "+", "plus")
  created = []

  def creator(next_creator, shape, dtype, init, context):
    created.append(context.full_name)
    return next_creator(shape, dtype, init)

  def forward(x):
    with hk.custom_creator(creator):
      model = spec.constructor(num_classes=layout["num_classes"],
                               **{**spec.default_kwargs, **kwargs})
      return model(x, is_training=True)

  images = jax.ShapeDtypeStruct(tuple(layout["input_size_used"]), jnp.float32)
  params = jax.eval_shape(hk.transform(forward).init, jax.random.PRNGKey(0), images)
  got = {m: {n: list(a.shape) for n, a in v.items()} for m, v in params.items()}
  assert got == layout["params"]
  assert created == layout["param_creation_order"]
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) == layout["num_params"]
  assert (spec.train_image_size, spec.test_image_size) == (
      layout["train_imsize"], layout["test_imsize"])


def test_registry_names_and_specs():
  names = models.available()
  expected = ([f"nfnet_f{i}" for i in range(8)] + [f"nfnet_f{i}plus" for i in range(8)]
              + [f"nf_regnet_b{i}" for i in range(9)]
              + [f"{f}{d}" for f in ("nf_resnet", "resnet") for d in (50, 101, 152, 200, 288, 600)]
              + [f"{f}{d}" for f in ("skipinit_resnet", "fixup_resnet") for d in (50, 101, 152, 200, 288, 600)]
              + ["nfnet_l0"] + [f"eca_nfnet_l{i}" for i in range(4)])
  assert sorted(names) == sorted(expected)
  f0, f7, b0 = (models.get_spec(n) for n in ("nfnet_f0", "nfnet_f7plus", "nf_regnet_b0"))
  assert (f0.family, f0.train_image_size, f0.test_image_size, f0.drop_rate) == (
      "nfnet", 192, 256, 0.2)
  assert (f7.train_image_size, f7.test_image_size, f7.drop_rate) == (480, 608, 0.5)
  assert f7.official_layout == "nfnet_F7plus"
  assert b0.official_layout == "nf_regnet_B0" and b0.default_kwargs == {"variant": "B0"}
  assert f0.min_image_size == 32 and isinstance(f0, models.ModelSpec)


def test_registry_errors():
  with pytest.raises(ValueError, match="nfnet_f0.*nf_regnet_b0"):
    models.create("nfnet_f9")
  with pytest.raises(ValueError, match="nfnet_f1plus"):
    models.get_spec("F1")
  with pytest.raises(ValueError, match=r"\['colour'\].*stochdepth_rate"):
    models.create("nfnet_f0", colour="blue")
  with pytest.raises(ValueError, match="num_classes"):
    models.create("nfnet_f0", num_classes=0)
  with pytest.raises(ValueError, match="activation"):
    models.create("nf_regnet_b0", activation="no_such_fn")
  with pytest.raises(ValueError, match="final_conv"):
    models.create("nfnet_f0", final_conv_mult=None)
  model = models.create("nf_regnet_b0", num_classes=3)
  with pytest.raises(ValueError, match="smaller than the minimum 32x32"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((16, 16, 3)))


def test_nfnet_options_change_the_layout():
  model = models.create("nfnet_f0", num_classes=7, use_two_convs=False, final_conv_mult=None,
                        final_conv_ch=100, width=1.5)
  params, state = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  assert state == {}
  assert not any("conv1b" in m for m in params)
  assert params["NFNet/~/final_conv"]["w"].shape == (1, 1, 2304, 100)
  assert params["NFNet/~/linear"]["w"].shape == (100, 7)
  # Bottleneck 384 · 0.5 = 192 is rounded down to whole groups of 128.
  assert params["NFNet/~/nf_block/~/conv2"]["w"].shape == (1, 1, 128, 384)


def test_nfnet_f0_forward_eval_with_signal():
  model = models.create("nfnet_f0", num_classes=10)
  images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3), np.float32))
  shapes, state = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  params = _random_params(shapes)
  apply = jax.jit(model.apply, static_argnums=(4, 5))
  outputs, _ = apply(params, state, None, images, False, True)
  logits = np.asarray(outputs["logits"])
  assert outputs["logits"].dtype == jnp.float32 and logits.shape == (2, 10)
  assert np.all(np.isfinite(logits)) and np.abs(logits).max() > 0
  signal = outputs["signal"]
  assert set(signal) == {"avg_sq_mean", "avg_var", "res_avg_var", "transition"}
  assert all(v.shape == (12,) for v in signal.values())
  np.testing.assert_array_equal(
      signal["transition"], [1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0])
  assert np.all(np.asarray(signal["avg_var"]) > 0)


@pytest.fixture(scope="module")
def regnet():
  model = models.create("nf_regnet_b0", num_classes=5)
  images = jnp.asarray(np.random.default_rng(1).standard_normal((4, 64, 64, 3), np.float32))
  shapes, state = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  # Random stand-in weights (cheaper than compiling init); skip gains at their init value 0.
  params = _random_params(shapes)
  params = {m: ({**v, "skip_gain": np.zeros((), np.float32)} if "skip_gain" in v else v)
            for m, v in params.items()}
  apply = jax.jit(model.apply, static_argnums=(4, 5))
  return model, params, state, images, apply


def test_regnet_training_mode_uses_rng(regnet):
  model, params, state, images, apply = regnet
  a, _ = apply(params, state, jax.random.PRNGKey(1), images, True, True)
  b, _ = apply(params, state, jax.random.PRNGKey(2), images, True, True)
  assert a["logits"].shape == (4, 5) and a["logits"].dtype == jnp.float32
  assert not np.allclose(a["logits"], b["logits"])  # dropout masks differ
  c, _ = apply(params, state, None, images, False, True)
  d, _ = apply(params, state, None, images, False, True)
  np.testing.assert_array_equal(c["logits"], d["logits"])  # eval is deterministic
  with pytest.raises(ValueError, match="PRNGKey"):
    model.apply(params, state, None, images, True)


def test_regnet_signal_propagation_at_init(regnet):
  _, params, state, images, apply = regnet
  # SkipInit: every block is the identity-plus-shortcut at init, so the stream's variance
  # only changes at transition blocks.
  out, _ = apply(params, state, None, images, False, True)
  sig = jax.tree.map(np.asarray, out["signal"])
  assert sig["transition"].tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
  for i in np.flatnonzero(~sig["transition"]):
    np.testing.assert_allclose(sig["avg_var"][i], sig["avg_var"][i - 1], rtol=1e-5)
  # With the skip gains at 1 each block adds α² · Var(residual) (h + α f(h/β)), and
  # Scaled WS keeps every channel's mean near zero.
  opened = {m: ({**v, "skip_gain": np.ones((), np.float32)} if "skip_gain" in v else v)
            for m, v in params.items()}
  out, _ = apply(opened, state, None, images, False, True)
  sig = jax.tree.map(np.asarray, out["signal"])
  inner = np.flatnonzero(~sig["transition"])
  growth = sig["avg_var"][inner] - sig["avg_var"][inner - 1]
  predicted = ALPHA**2 * sig["res_avg_var"][inner]
  # Per block up to sampling covariance between stream and branch; on aggregate tight.
  np.testing.assert_allclose(growth, predicted, rtol=0.5)
  np.testing.assert_allclose(growth.sum(), predicted.sum(), rtol=0.1)
  assert np.all(sig["res_avg_var"] > 0)
  assert np.all(sig["avg_sq_mean"] < 0.02)


def test_regnet_bfloat16_forward(regnet):
  _, params, state, images, apply = regnet
  ref, _ = apply(params, state, None, images, False, True)
  p16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
  out, _ = apply(p16, state, None, images.astype(jnp.bfloat16), False, True)
  assert out["logits"].dtype == jnp.float32
  assert out["signal"]["avg_var"].dtype == jnp.float32
  np.testing.assert_allclose(out["logits"], ref["logits"], rtol=0.1, atol=0.05)


def test_regnet_remat_gives_the_same_gradients_in_less_memory(regnet):
  model, params, state, images, _ = regnet
  remat = models.create("nf_regnet_b0", num_classes=5, remat=True, stochdepth_rate=0.5)
  plain = models.create("nf_regnet_b0", num_classes=5, stochdepth_rate=0.5)
  shapes, _ = jax.eval_shape(remat.init, jax.random.PRNGKey(0), images)
  assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, params)
  images = jnp.tile(images, (4, 1, 1, 1))  # batch 16: activations outweigh the parameters

  def compiled_grad(m):
    def loss(p):  # stochastic depth draws from the rng: the recomputation must redraw the same
      out, _ = m.apply(p, state, jax.random.PRNGKey(3), images, True)
      return jnp.sum(jnp.sin(out["pool"]))
    return jax.jit(jax.value_and_grad(loss)).lower(params).compile()

  with_remat, without = compiled_grad(remat), compiled_grad(plain)
  chex.assert_trees_all_close(with_remat(params), without(params), rtol=1e-4, atol=1e-5)
  temp = lambda compiled: compiled.memory_analysis().temp_size_in_bytes
  assert temp(with_remat) < 0.7 * temp(without)
