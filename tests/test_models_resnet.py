"""BatchNorm ResNet and NF-ResNet: layout, forward passes, cross-replica BN, signal propagation."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import layers
from nfnet_jax import models
from nfnet_jax.models import nf_resnet, resnet
import official_layouts



def _shapes(tree):
  return {m: {k: list(v.shape) for k, v in d.items()} for m, d in tree.items()}


@pytest.mark.parametrize('name', ['resnet50', 'nf_resnet50'])  # all 32: test_layout.py
def test_layout_equals_official(name):
  spec = models.get_spec(name)
  ref = official_layouts.load(spec.official_layout)
  model = models.create(name, num_classes=ref['num_classes'])
  images = jax.ShapeDtypeStruct(tuple(ref['input_size_used']), jnp.float32)
  params, state = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  assert _shapes(params) == ref['params']
  assert _shapes(state) == ref['state']
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == ref['num_params']


def _tiny(family, **kw):
  cls = resnet.ResNet if family == 'resnet' else nf_resnet.NF_ResNet
  return hk.transform_with_state(
      lambda x, t, m=False: cls(num_classes=5, depth=(1, 1, 1, 1), width=1, **kw)(x, t, m))


X = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3)) * 2.0 + 0.5


@pytest.fixture(scope='module')
def tiny_params():
  """Initial params/state of the tiny models, shared (init compiles are the slow part)."""
  out = {}
  for family, kw in (('resnet', {}), ('nf_resnet', {'use_se': True})):
    params, state = jax.jit(_tiny(family, **kw).init, static_argnums=2)(
        jax.random.PRNGKey(1), X, True)
    # Non-zero skip gains and classifier weights, so every path reaches the logits.
    out[family] = (jax.tree.map(lambda p: p + 0.05, params), state)
  return out


@pytest.mark.parametrize('family,kw', [
    ('resnet', {'block_order': 'relu_bn_conv'}),
    ('nf_resnet', {'use_se': True, 'drop_rate': 0.5, 'stochdepth_rate': 0.9}),
])
def test_forward_small_images_train_and_eval(tiny_params, family, kw):
  model = _tiny(family, **kw)
  # ReLU-BN-Conv blocks have the v2 block's parameters under another module name.
  rename = lambda t: {k.replace('res_block_v2', 'res_block_relu_bn'): v for k, v in t.items()}
  params, state = map(rename, tiny_params[family])
  x = X[:4]
  apply = jax.jit(model.apply, static_argnums=(4, 5))
  out, new_state = apply(params, state, jax.random.PRNGKey(2), x, True, True)
  assert out['logits'].shape == (4, 5) and out['logits'].dtype == jnp.float32
  assert np.all(np.isfinite(out['logits']))
  sig = out['signal']
  assert sig['transition'].tolist() == [True] * 4
  for k in ('avg_sq_mean', 'avg_var', 'res_avg_var'):
    assert sig[k].shape == (4,) and np.all(np.isfinite(sig[k]))
  if family == 'resnet':  # training updates the BN moving averages
    assert not all(np.allclose(a, b) for a, b in
                   zip(jax.tree.leaves(state), jax.tree.leaves(new_state)))
  else:  # dropout and stochastic depth draw from the rng in training
    other, _ = apply(params, state, jax.random.PRNGKey(3), x, True, True)
    assert not np.allclose(out['logits'], other['logits'])
  # Eval needs no rng, is deterministic and leaves the state unchanged.
  e1, s1 = apply(params, new_state, None, x, False, True)
  e2, _ = apply(params, new_state, None, x, False, True)
  np.testing.assert_array_equal(e1['logits'], e2['logits'])
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(s1), jax.tree.leaves(new_state)))


def test_post_activation_v1_forward():
  model = _tiny('resnet', block_order='conv_bn_relu', use_se=True)
  fn = jax.jit(lambda rng, x: model.apply(*model.init(rng, x, True), None, x, True, True))
  out, state = fn(jax.random.PRNGKey(0), X[:4])
  assert 'ResNet/~/initial_bn/~/mean_ema' in state
  assert 'ResNet/~/res_block_v1/shortcut_bn/~/var_ema' in state  # made in __call__, as upstream
  assert out['logits'].shape == (4, 5) and np.all(np.isfinite(out['logits']))
  # Post-activation: the branch ends in BN (then the SE gate, ~1 at init), so unit variance.
  np.testing.assert_allclose(out['signal']['res_avg_var'], 1.0, atol=0.1)


@pytest.mark.parametrize('family', ['resnet', 'nf_resnet'])
def test_bf16_params_and_images_give_float32_logits(tiny_params, family):
  model = _tiny(family, use_se=family == 'nf_resnet')
  params, state = tiny_params[family]
  bf = lambda t: jax.tree.map(lambda a: a.astype(jnp.bfloat16), t)
  both = jax.jit(lambda p, s, x: (model.apply(p, s, None, x, False)[0]['logits'],
                                  model.apply(bf(p), s, None, bf(x), False)[0]['logits']))
  out32, out16 = both(params, state, X[:2])
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.05, rtol=0.05)


def test_batchnorm_uses_cross_replica_statistics_under_pmap(tiny_params):
  n = jax.local_device_count()
  assert n >= 2, 'conftest provides 4 CPU devices'
  per_device = X.shape[0] // n
  params, state = tiny_params['resnet']
  ref, ref_state = jax.jit(_tiny('resnet').apply, static_argnums=4)(params, state, None, X, True)
  model = _tiny('resnet', bn_axis_name='batch')
  rep = lambda t: jax.tree.map(lambda a: jnp.stack([a] * n), t)
  out, new_state = jax.pmap(lambda p, s, xs: model.apply(p, s, None, xs, True),
                            axis_name='batch')(rep(params), rep(state),
                                               X.reshape((n, per_device) + X.shape[1:]))
  # Per-device statistics over 2 examples would give different logits and averages.
  np.testing.assert_allclose(out['logits'].reshape(ref['logits'].shape), ref['logits'],
                             rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)


def _nf_signal(**kw):
  model = hk.transform_with_state(lambda x: nf_resnet.NF_ResNet(
      num_classes=5, depth=(3, 5, 2, 1), width=1, skipinit_gain=1.0, stochdepth_rate=0.0,
      **kw)(x, is_training=True, return_metrics=True))
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 48, 48, 3))
  # Op by op: the blocks repeat few shapes, so this compiles less than a whole-graph jit.
  params, state = model.init(jax.random.PRNGKey(1), x)
  return jax.tree.map(np.asarray, model.apply(params, state, None, x)[0]['signal'])


@pytest.mark.slow
def test_nf_resnet_signal_propagation_at_init_matches_paper():
  alpha = 0.2
  ws = _nf_signal(alpha=alpha)
  plain = _nf_signal(alpha=alpha, use_ws=False)
  # With Scaled WS the squared channel mean stays near 0 at every block ...
  assert np.all(ws['avg_sq_mean'] < 0.1)
  # ... without it the mean shift grows with depth, far beyond that.
  assert np.all(plain['avg_sq_mean'] > 10 * ws['avg_sq_mean'].max())
  assert plain['avg_sq_mean'][7] > 2 * plain['avg_sq_mean'][0]
  # Variance: grows by about α² per block inside a stage, resets at each transition.
  var, trans = ws['avg_var'], ws['transition']
  starts = np.flatnonzero(trans)
  assert starts.tolist() == [0, 3, 8, 10]
  for s, e in zip(starts, list(starts[1:]) + [len(var)]):
    assert abs(var[s] - (1 + alpha ** 2)) < 0.25
    if e - s > 1:
      steps = np.diff(var[s:e])
      assert 0.4 * alpha ** 2 < steps.mean() < 1.5 * alpha ** 2, steps
  for s in starts[1:]:
    assert var[s] < var[s - 1]
  # Expected-variance bookkeeping predicts the same trend the network shows.
  predicted = np.asarray(layers.expected_variances((3, 5, 2, 1), alpha))
  assert np.corrcoef(predicted, var)[0, 1] > 0.9


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match='depth'):
    models.create('resnet50', depth=51)
  with pytest.raises(ValueError, match='block_order'):
    models.create('resnet50', block_order='bn_conv')
  with pytest.raises(ValueError, match='activation'):
    models.create('nf_resnet50', activation='nope')
  with pytest.raises(ValueError, match='drop_rate'):
    models.create('nf_resnet50', drop_rate=1.5)
