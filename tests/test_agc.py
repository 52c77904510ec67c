"""Tests for nfnet_jax.agc: the unit-wise clipping rule, layouts, masks, dtypes, jit/pmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnet_jax.agc import (AdaptiveGradClipState, adaptive_grad_clip, default_axes, optax_axes,
                           unitwise_norm)

CLIP = 0.01
EPS = 1e-3

# Every layout with its unit axes: (shape, axes that make up one unit).
LAYOUTS = {
    'scalar': ((), ()),
    'vector': ((5,), (0,)),
    'linear': ((6, 4), (0,)),
    'linear_in1': ((1, 7), (0, 1)),  # At most one non-singleton dim: one unit, as DeepMind/optax.
    'conv1d': ((3, 4, 5), (0, 1)),
    'conv2d': ((3, 3, 4, 5), (0, 1, 2)),
    'conv3d': ((2, 2, 2, 3, 4), (0, 1, 2, 3)),
}


def np_agc(g, w, axes, clipping=CLIP, eps=EPS):
  """The rule of the paper, in float64: returns (clipped gradient, per-unit trigger)."""
  g = np.asarray(g, np.float64)
  w = np.asarray(w, np.float64)
  g_norm = np.sqrt(np.sum(g * g, axis=axes, keepdims=True))
  w_norm = np.maximum(np.sqrt(np.sum(w * w, axis=axes, keepdims=True)), eps)
  trigger = g_norm / w_norm > clipping
  return np.where(trigger, g * clipping * w_norm / np.maximum(g_norm, 1e-6), g), trigger


def make_leaf(rng, shape, axes, zero_param=False):
  """Param and gradient whose units alternate between ratios 0.4*CLIP and 3*CLIP (far from the
  threshold, so float32 and float64 agree on which units clip)."""
  w = np.zeros(shape, np.float32) if zero_param else rng.normal(size=shape).astype(np.float32)
  g = rng.normal(size=shape)
  w_norm = np.maximum(np.sqrt(np.sum(np.float64(w) ** 2, axis=axes, keepdims=True)), EPS)
  g_norm = np.sqrt(np.sum(g ** 2, axis=axes, keepdims=True))
  ratio = np.where(np.arange(g_norm.size).reshape(g_norm.shape) % 2 == 0, 3.0, 0.4) * CLIP
  return w, (g / g_norm * ratio * w_norm).astype(np.float32)


def layout_tree(seed=0, zero_param=False):
  rng = np.random.default_rng(seed)
  params, grads = {}, {}
  for name, (shape, axes) in LAYOUTS.items():
    params[name], grads[name] = make_leaf(rng, shape, axes, zero_param)
  return params, grads


def agc_update(grads, params, **kwargs):
  tx = adaptive_grad_clip(CLIP, EPS, **kwargs)
  return tx.update(grads, tx.init(params), params)


class VariantsTest(chex.TestCase):
  """The clipping arithmetic on every layout, with and without jit and under pmap."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_every_layout_matches_the_rule(self):
    params, grads = layout_tree()
    clipped = self.variant(lambda g, p: agc_update(g, p)[0])(grads, params)
    for name, (_, axes) in LAYOUTS.items():
      want, trigger = np_agc(grads[name], params[name], axes)
      assert trigger.any() and (~trigger).any() or trigger.size == 1, name
      got = np.asarray(clipped[name])
      np.testing.assert_allclose(got, want, rtol=2e-6, atol=0, err_msg=name)
      # Units below the threshold come back bit for bit.
      keep = np.broadcast_to(~trigger, got.shape)
      np.testing.assert_array_equal(got[keep], grads[name][keep], err_msg=name)

  @chex.variants(with_jit=True, without_jit=True)
  def test_identical_to_optax_where_they_overlap(self):
    rng = np.random.default_rng(1)
    shapes = {'s': (), 'v': (7,), 'lin': (5, 3), 'lin1': (1, 4), 'c2': (3, 3, 2, 4),
              'c3': (2, 2, 2, 2, 3), 'mh': (4, 2, 3)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    grads = {k: jnp.asarray(rng.normal(size=s) * 0.02, jnp.float32) for k, s in shapes.items()}
    # optax treats 3-D leaves as multi-head linears (axis 0); ours as 1-D convs unless told.
    ours = self.variant(lambda g, p: agc_update(g, p, axes=optax_axes)[0])(grads, params)
    ref_tx = optax.adaptive_grad_clip(CLIP, EPS)
    theirs = self.variant(lambda g, p: ref_tx.update(g, ref_tx.init(p), p)[0])(grads, params)
    if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
      chex.assert_trees_all_equal(ours, theirs)
    else:
      # Under jit XLA computes optax's rescale as one division per element; ours is one factor per
      # unit: clipped units agree to float32's last bit, the others are the input bit for bit.
      chex.assert_trees_all_close(ours, theirs, rtol=2.5e-7, atol=0)
      for name in shapes:
        kept = np.asarray(theirs[name]) == np.asarray(grads[name])
        np.testing.assert_array_equal(np.asarray(ours[name])[kept], np.asarray(grads[name])[kept])


@pytest.mark.parametrize('name', list(LAYOUTS))
def test_unitwise_norm_default_layouts(name):
  shape, axes = LAYOUTS[name]
  x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  assert default_axes(shape) == axes
  norm = unitwise_norm(x)
  want = np.sqrt(np.sum(np.float64(x) ** 2, axis=axes, keepdims=True))
  assert norm.shape == want.shape and norm.dtype == jnp.float32
  np.testing.assert_allclose(norm, want, rtol=1e-6)


def test_unitwise_norm_explicit_axes_and_errors():
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  np.testing.assert_allclose(unitwise_norm(x, axes=-1), np.linalg.norm(x, axis=-1, keepdims=True),
                             rtol=1e-6)
  np.testing.assert_allclose(unitwise_norm(x, axes=(2, 0)),
                             np.sqrt((x ** 2).sum(axis=(0, 2), keepdims=True)), rtol=1e-6)
  with pytest.raises(ValueError, match='out of range'):
    unitwise_norm(x, axes=3)
  with pytest.raises(ValueError, match='repeated'):
    unitwise_norm(x, axes=(0, -3))
  with pytest.raises(ValueError, match='axes=...'):
    default_axes((2, 2, 2, 2, 2, 2))


def test_per_leaf_axes_for_other_layouts():
  """PyTorch OIHW kernels and multi-head projections through per-leaf axes (callable or pytree)."""
  rng = np.random.default_rng(3)
  torch_shape, torch_axes = (5, 4, 3, 3), (1, 2, 3)  # Units: output channels on axis 0.
  heads_shape, heads_axes = (6, 2, 3), (0,)  # (in, heads, head_dim): one unit per (head, dim).
  params, grads = {}, {}
  params['torch'], grads['torch'] = make_leaf(rng, torch_shape, torch_axes)
  params['heads'], grads['heads'] = make_leaf(rng, heads_shape, heads_axes)
  params['conv'], grads['conv'] = make_leaf(rng, (3, 3, 4, 5), (0, 1, 2))

  by_fn = lambda path, p: {'torch': torch_axes, 'heads': heads_axes}.get(path)
  by_tree = {'torch': torch_axes, 'heads': heads_axes, 'conv': None}
  for axes in (by_fn, by_tree):
    out, _ = agc_update(grads, params, axes=axes)
    for name, ax in (('torch', torch_axes), ('heads', heads_axes), ('conv', (0, 1, 2))):
      np.testing.assert_allclose(out[name], np_agc(grads[name], params[name], ax)[0],
                                 rtol=2e-6, err_msg=name)
  with pytest.raises(ValueError, match="'torch'.*out of range"):
    agc_update(grads, params, axes={'torch': (1, 2, 4), 'heads': None, 'conv': None})
  with pytest.raises(ValueError, match='structure of the params'):
    agc_update(grads, params, axes={'torch': (1, 2, 3)})


def test_zero_initialised_params_are_handled_by_eps():
  params, grads = layout_tree(seed=4, zero_param=True)
  out, _ = agc_update(grads, params)
  for name, (_, axes) in LAYOUTS.items():
    want, trigger = np_agc(grads[name], params[name], axes)
    np.testing.assert_allclose(out[name], want, rtol=2e-6, err_msg=name)
    # Clipped units of a zero param end with norm exactly clipping * eps: nonzero, finite.
    norms = np.sqrt(np.sum(np.float64(out[name]) ** 2, axis=axes, keepdims=True))
    np.testing.assert_allclose(norms[trigger], CLIP * EPS, rtol=1e-5)
  # A zero gradient stays zero (no 0/0).
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  out, _ = agc_update(zeros, params)
  chex.assert_trees_all_equal(out, zeros)


def test_masked_leaves_are_untouched():
  params, grads = layout_tree(seed=5)
  big = jnp.ones((2, 2, 2, 2, 2, 2))  # No default layout: fine, since it is masked out.
  params['head'], grads['head'] = big, big * 100.0
  unmasked = {k: k != 'head' and k != 'conv2d' for k in params}
  by_pred = lambda path, p: path not in ('head', 'conv2d')
  for mask in (unmasked, by_pred):
    out, _ = agc_update(grads, params, mask=mask)
    assert out['head'] is grads['head'] and out['conv2d'] is grads['conv2d']
    np.testing.assert_allclose(out['linear'], np_agc(grads['linear'], params['linear'], (0,))[0],
                               rtol=2e-6)
  with pytest.raises(ValueError, match="'head'.*axes"):
    agc_update(grads, params)
  with pytest.raises(ValueError, match='must be a Python bool'):
    agc_update(grads, params, mask={k: jnp.array(True) for k in params})


def test_bf16_in_bf16_out_with_float32_norms():
  params, grads = layout_tree(seed=6)
  p16 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  g16 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), grads)
  out, _ = jax.jit(lambda g, p: agc_update(g, p))(g16, p16)
  for name, (_, axes) in LAYOUTS.items():
    assert out[name].dtype == jnp.bfloat16, name
    want, trigger = np_agc(np.float32(g16[name]), np.float32(p16[name]), axes)
    # One bf16 rounding of the float32 result.
    np.testing.assert_allclose(np.float32(out[name]), want, rtol=2 ** -8, atol=0, err_msg=name)
    keep = np.broadcast_to(~trigger, want.shape)
    np.testing.assert_array_equal(np.float32(out[name])[keep], np.float32(g16[name])[keep])


def test_report_counts_clipped_units_without_changing_updates():
  params, grads = layout_tree(seed=7)
  mask = lambda path, p: path != 'conv3d'
  plain, plain_state = jax.jit(lambda g, p: agc_update(g, p, mask=mask))(grads, params)
  tx = adaptive_grad_clip(CLIP, EPS, mask=mask, report=True)
  state = tx.init(params)
  assert isinstance(plain_state, optax.EmptyState)
  assert isinstance(state, AdaptiveGradClipState) and float(state.clip_fraction) == 0.0
  reported, state = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_equal(reported, plain)
  triggers = [np_agc(grads[k], params[k], ax)[1] for k, (_, ax) in LAYOUTS.items() if k != 'conv3d']
  want_clipped = sum(int(t.sum()) for t in triggers)
  want_units = sum(t.size for t in triggers)
  assert int(state.num_clipped) == want_clipped and int(state.num_units) == want_units
  np.testing.assert_allclose(state.clip_fraction, want_clipped / want_units, rtol=1e-6)


def test_pmap_with_different_gradients_per_replica():
  n = jax.local_device_count()
  assert n == 4, 'tests/conftest.py should give 4 host devices'
  rng = np.random.default_rng(8)
  params, _ = layout_tree(seed=8)
  per_device = [make_leaf(rng, (3, 3, 4, 5), (0, 1, 2))[1] * (i + 1) for i in range(n)]
  tx = adaptive_grad_clip(CLIP, EPS, report=True)
  w = np.broadcast_to(params['conv2d'], (n,) + params['conv2d'].shape)
  state = jax.pmap(tx.init)({'c': w})
  out, state = jax.pmap(tx.update, axis_name='batch')({'c': np.stack(per_device)}, state, {'c': w})
  for i in range(n):
    want, trigger = np_agc(per_device[i], params['conv2d'], (0, 1, 2))
    np.testing.assert_allclose(out['c'][i], want, rtol=2e-6)
    np.testing.assert_allclose(state.clip_fraction[i], trigger.mean(), rtol=1e-6)


def test_composes_with_optax_optimizers():
  params, grads = layout_tree(seed=9)
  clipped, _ = agc_update(grads, params)
  for inner, want in ((optax.sgd(0.5), lambda c: -0.5 * c),
                      (optax.sign_sgd(0.1), lambda c: -0.1 * jnp.sign(c))):
    tx = optax.chain(adaptive_grad_clip(CLIP, EPS), inner)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    chex.assert_trees_all_close(updates, jax.tree_util.tree_map(want, clipped), rtol=1e-6)


@pytest.mark.parametrize('bad', [0.0, -0.01, float('nan')])
def test_invalid_hyperparameters(bad):
  with pytest.raises(ValueError, match='clipping'):
    adaptive_grad_clip(bad)
  if bad < 0:
    with pytest.raises(ValueError, match='eps'):
      adaptive_grad_clip(0.01, eps=bad)


def test_needs_params():
  tx = adaptive_grad_clip(CLIP)
  with pytest.raises(ValueError, match='params'):
    tx.update({'w': jnp.ones(3)}, tx.init(None))


def _optax_tree(seed, shapes, scale):
  rng = np.random.default_rng(seed)
  is_shape = lambda s: isinstance(s, tuple)
  params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                                  is_leaf=is_shape)
  # Mixed ratios so that some units clip and others do not.
  grads = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s) * scale * rng.choice([0.1, 10.0], size=s), jnp.float32),
      shapes, is_leaf=is_shape)
  return params, grads


def _both(ours_tx, optax_tx, grads, params):
  ours, _ = ours_tx.update(grads, ours_tx.init(params), params)
  theirs, _ = optax_tx.update(grads, optax_tx.init(params), params)
  return ours, theirs


@pytest.mark.parametrize('args,kwargs', [
    ((0.05,), {}),
    ((0.05, 1e-2), {}),                       # eps positional
    ((0.05,), {'eps': 0.5}),                  # a large floor clips the small params harder
    ((0.05, 1e-3, 0), {}),                    # axis positional: one int for every leaf
    ((0.05,), {'axis': (0, 1)}),              # a tuple for every leaf (not a pytree)
    ((0.05,), {'axis': -1}),
    ((0.05, 1e-3), {'axis': ()}),             # every element its own unit
])
def test_optax_style_calls_equal_optax(args, kwargs):
  """The calls people write for optax.adaptive_grad_clip give its results, op by op bit for bit."""
  shapes = {'lin': (5, 3), 'lin1': (1, 4), 'c2': (3, 3, 2, 4), 'c3': (2, 2, 2, 2, 3),
            'nested': {'w': (6, 2), 'b': (4, 2)}}
  if 'axis' not in kwargs and len(args) < 3:
    shapes.update({'s': (), 'v': (7,)})  # optax's axis reduces every leaf: none may be smaller.
  params, grads = _optax_tree(0, shapes, 0.02)
  ours, theirs = _both(adaptive_grad_clip(*args, **kwargs), optax.adaptive_grad_clip(*args, **kwargs),
                       grads, params)
  chex.assert_trees_all_equal(ours, theirs)
  assert any(not np.array_equal(o, g) for o, g in
             zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(grads))), 'nothing clipped'


def test_3d_default_units_differ_from_optax_and_optax_axes_reproduces_it():
  params, grads = _optax_tree(1, {'conv1d': (3, 4, 5), 'mh': (4, 2, 3), 'flat': (1, 1, 6)}, 0.02)
  ours, theirs = _both(adaptive_grad_clip(0.05), optax.adaptive_grad_clip(0.05), grads, params)
  assert not np.array_equal(ours['conv1d'], theirs['conv1d'])  # (0, 1) against optax's (0,)
  want, _ = np_agc(grads['conv1d'], params['conv1d'], (0, 1), clipping=0.05)
  np.testing.assert_allclose(ours['conv1d'], want, rtol=2e-6)
  ours, _ = _both(adaptive_grad_clip(0.05, axes=optax_axes), optax.adaptive_grad_clip(0.05), grads,
                  params)
  chex.assert_trees_all_equal(ours, theirs)


def test_axis_errors_are_one_line_and_name_the_leaf():
  with pytest.raises(ValueError, match='not both'):
    adaptive_grad_clip(0.01, axis=0, axes=lambda path, p: None)
  with pytest.raises(ValueError, match=r'axis must be None, an int or a tuple of ints'):
    adaptive_grad_clip(0.01, 1e-3, {'w': 0})
  tx = adaptive_grad_clip(0.01, axis=(0, 1))
  params = {'conv': {'w': jnp.ones((3, 3, 2)), 'b': jnp.ones(2)}}
  with pytest.raises(ValueError, match=r"param 'conv/b'.*axis 1 is out of range"):
    tx.update(params, tx.init(params), params)
