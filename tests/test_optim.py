"""Tests for nfnet_jax.optim: DeepMind's SGD_AGC step for step, schedule, masks, configs."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import agc, models, optim
import official_layouts

LAYOUTS = [str(official_layouts.path(stem)) for stem in official_layouts.STEMS]
F0_LAYOUT = str(official_layouts.path('nfnet_F0'))


# DeepMind's parameter groups (nfnets experiment_nfnets.Experiment._make_opt), restated:
# gains/biases get no weight decay; the weights of non-SE 'linear' modules are not clipped.
def dm_is_gain_or_bias(module, name):
  del module
  return name in ('scale', 'offset', 'b') or 'gain' in name or 'bias' in name


def dm_is_fc_weight(module, name):
  return not dm_is_gain_or_bias(module, name) and 'linear' in module and 'squeeze_excite' not in module


def split(path):
  module, _, name = path.rpartition('/')
  return module, name


def flat_paths(tree):
  keyed, _ = jax.tree_util.tree_flatten_with_path(tree)
  return ['/'.join(str(k.key) for k in path) for path, _ in keyed], [v for _, v in keyed]


def layout_params(path, shrink=None):
  with open(path) as f:
    layout = json.load(f)['params']
  if shrink is None:
    return {m: {n: jax.ShapeDtypeStruct(tuple(s), jnp.float32) for n, s in v.items()}
            for m, v in layout.items()}
  return {m: {n: shrink(m, n, tuple(s)) for n, s in v.items()} for m, v in layout.items()}


# ---------------------------------------------------------------- masks on every official layout


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda p: os.path.basename(p)[:-5])
def test_masks_match_deepmind_partition_on_every_official_layout(layout):
  params = layout_params(layout)
  root = next(iter(params)).split('/~/')[0]
  assert optim.classifier_module(params) == f'{root}/~/linear'
  paths, _ = flat_paths(params)
  clip = dict(zip(paths, flat_paths(optim.clip_mask(params, 'final_weight'))[1]))
  head = dict(zip(paths, flat_paths(optim.clip_mask(params, 'head'))[1]))
  decay = dict(zip(paths, flat_paths(optim.weight_decay_mask(params))[1]))
  for path in paths:
    module, name = split(path)
    assert clip[path] == (not dm_is_fc_weight(module, name)), path
    assert head[path] == (module != f'{root}/~/linear'), path
    assert decay[path] == (not dm_is_gain_or_bias(module, name)), path
  assert sum(not v for v in clip.values()) == 1 and sum(not v for v in head.values()) == 2
  assert all(flat_paths(optim.clip_mask(params, 'none'))[1])


@pytest.mark.parametrize('name', ['nfnet_f0', 'nf_resnet50', 'nf_regnet_b0', 'resnet50', 'skipinit_resnet50',
                                  'fixup_resnet50'])
def test_masks_on_the_models_param_trees(name):
  """The real models' trees (shapes only, via eval_shape), including BN scale/offset."""
  size = models.get_spec(name).min_image_size
  model = models.create(name, num_classes=10)
  params, _ = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), is_training=True))
  head = optim.classifier_module(params)
  paths, leaves = flat_paths(params)
  clip = flat_paths(optim.clip_mask(params))[1]
  decay = flat_paths(optim.weight_decay_mask(params))[1]
  assert [p for p, c in zip(paths, clip) if not c] == [head + '/w']
  for path, leaf, d in zip(paths, leaves, decay):
    # Exactly the kernels and linear weights are decayed (BN scale/offset are (1, 1, 1, C)).
    assert d == (split(path)[1] == 'w' and sum(n > 1 for n in leaf.shape) > 1), path


def test_classifier_must_be_identifiable():
  two_heads = {'net/~/a': {'w': jnp.ones((2, 2))}, 'net/~/b': {'w': jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match='final classifier'):
    optim.clip_mask(two_heads)
  tx = optim.create(dict(clip_exclude='final_weight'), global_batch_size=256, total_steps=10,
                    steps_per_epoch=1.0)
  with pytest.raises(ValueError, match="clip_exclude='none'"):
    tx.init(two_heads)


# ---------------------------------------------------------------- schedule


def test_schedule_values():
  config = optim.get_config()
  config.warmup_epochs = 2
  # 1024 examples per step: peak 0.1 * 1024 / 256 = 0.4; warmup 2 * 10.3 = 20.6 steps (unrounded).
  sched = optim.create_schedule(config, global_batch_size=1024, total_steps=120,
                                steps_per_epoch=10.3)
  peak, warmup, total = 0.4, 20.6, 120
  cos = lambda s: 0.5 * peak * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
  expected = {0: 0.0, 7: peak * 7 / warmup, 20: peak * 20 / warmup, 20.6: peak, 21: cos(21),
              70.3: peak / 2, 100: cos(100), 120: 0.0, 150: 0.0}
  for step, want in expected.items():
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-7, err_msg=str(step))
  assert float(jax.jit(sched)(jnp.int32(7))) == pytest.approx(peak * 7 / warmup, rel=1e-6)

  config.schedule = 'constant'
  config.warmup_epochs = 0
  const = optim.create_schedule(config, global_batch_size=256, total_steps=10, steps_per_epoch=3)
  assert [float(const(s)) for s in (0, 5, 10)] == pytest.approx([0.1] * 3)


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize('key,value', [
    ('name', 'adam'), ('lr', -0.1), ('lr', 0.0), ('lr', 'fast'), ('momentum', 1.0),
    ('momentum', -0.5), ('nesterov', 'yes'), ('weight_decay', -1e-5), ('warmup_epochs', -1),
    ('schedule', 'step'), ('clipping', 0.0), ('clipping', -0.01), ('clip_mode', 'layer'),
    ('clip_eps', -1e-3), ('clip_exclude', 'classifier'), ('report_clip_fraction', 1),
    ('b1', 1.0), ('b2', -0.1), ('adam_eps', 0.0), ('lr', float('nan')),
])
def test_invalid_config_names_the_key(key, value):
  config = {**optim.get_config().to_dict(), key: value}  # A dict: ConfigDict would refuse types.
  with pytest.raises(ValueError, match=f'{key}='):
    optim.create(config, global_batch_size=256, total_steps=100, steps_per_epoch=10)


def test_invalid_run_arguments():
  config = optim.get_config()
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]"):
    optim.create(dict(learning_rate=0.1), global_batch_size=256, total_steps=100,
                 steps_per_epoch=10)
  with pytest.raises(ValueError, match='warmup_epochs'):
    optim.create(config, global_batch_size=256, total_steps=50, steps_per_epoch=10)
  for kwargs, key in ((dict(global_batch_size=0), 'global_batch_size'),
                      (dict(total_steps=1.5), 'total_steps'),
                      (dict(steps_per_epoch=0.0), 'steps_per_epoch')):
    run = {**dict(global_batch_size=256, total_steps=100, steps_per_epoch=10.0), **kwargs}
    with pytest.raises(ValueError, match=key):
      optim.create(config, **run)


def test_get_config_is_the_paper_recipe():
  c = optim.get_config()
  assert (c.name, c.lr, c.momentum, c.nesterov, c.weight_decay, c.warmup_epochs, c.schedule,
          c.clipping, c.clip_eps, c.clip_exclude) == (
              'sgd', 0.1, 0.9, True, 2e-5, 5, 'cosine', 0.01, 1e-3, 'final_weight')


# ---------------------------------------------------------------- trajectory vs numpy reference

# A small NFNet: F0's stem, first two blocks (SE, shortcut, skip gain), final conv and classifier,
# with the official module paths and every dimension but the kernel size cut to at most 6.
_KEEP = ('stem_conv0', 'stem_conv1', 'stem_conv2', 'stem_conv3', 'nf_block', 'nf_block_1',
         'final_conv', 'linear')


def small_nfnet_params(seed=0):
  rng = np.random.default_rng(seed)

  def shrink(module, name, shape):
    shape = tuple(d if (len(shape) == 4 and i < 2) else min(d, 6) for i, d in enumerate(shape))
    if name == 'skip_gain' or 'bias' in name or name == 'b':
      return np.zeros(shape, np.float32)  # Zero-initialised, as in NFNets: AGC relies on eps.
    if name == 'gain':
      return np.ones(shape, np.float32)
    fan_in = int(np.prod(shape[:-1]))
    return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)

  params = layout_params(F0_LAYOUT, shrink)
  return {m: v for m, v in params.items() if m.split('/~/')[1] in _KEEP}


def gradient_sequence(params, steps, seed=1):
  """Gradients whose units span ratios ||G_i||/||W_i|| from 1e-4 to 1 (some clip, some not)."""
  rng = np.random.default_rng(seed)
  seq = []
  for _ in range(steps):
    seq.append(jax.tree_util.tree_map(
        lambda p: (rng.normal(size=p.shape) * 10.0 ** rng.uniform(-4, 0, size=p.shape[-1:] or None)
                   * max(np.sqrt(np.mean(p ** 2)), 1e-3)).astype(np.float32), params))
  return seq


def reference_run(params, grads_seq, cfg, batch, total, spe):
  """DeepMind's SGD_AGC, written from the update rule in float64 numpy."""
  peak = cfg['lr'] * batch / 256
  warmup = cfg['warmup_epochs'] * spe
  mu, wd, clip, eps = cfg['momentum'], cfg['weight_decay'], cfg['clipping'], cfg['clip_eps']
  w = {(m, n): np.float64(v) for m, sub in params.items() for n, v in sub.items()}
  mom = {k: np.zeros_like(v) for k, v in w.items()}
  history, fractions = [], []
  for step, grads in enumerate(grads_seq):
    if step <= warmup:
      lr = peak * step / warmup
    else:
      lr = 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    g = {(m, n): np.float64(v) for m, sub in grads.items() for n, v in sub.items()}
    if cfg['clip_mode'] == 'global_norm' and clip is not None:
      norm = math.sqrt(sum(np.sum(v ** 2) for v in g.values()))
      g = {k: v * min(1.0, clip / norm) for k, v in g.items()}
    clipped = units = 0
    for (m, n), gk in g.items():
      wk = w[(m, n)]
      skip = {'final_weight': dm_is_fc_weight(m, n), 'head': m == 'NFNet/~/linear',
              'none': False}[cfg['clip_exclude']]
      if cfg['clip_mode'] == 'agc' and clip is not None and not skip:
        if np.squeeze(wk).ndim <= 1:
          axes = None
        else:
          axes = tuple(range(wk.ndim - 1))
        g_norm = np.sqrt(np.sum(gk ** 2, axis=axes, keepdims=True))
        w_norm = np.maximum(np.sqrt(np.sum(wk ** 2, axis=axes, keepdims=True)), eps)
        trigger = g_norm > clip * w_norm
        gk = np.where(trigger, gk * clip * w_norm / np.maximum(g_norm, 1e-6), gk)
        clipped += trigger.sum()
        units += trigger.size
      if not dm_is_gain_or_bias(m, n):
        gk = gk + wd * wk
      if mu:
        mom[(m, n)] = mu * mom[(m, n)] + gk
        gk = gk + mu * mom[(m, n)] if cfg['nesterov'] else mom[(m, n)]
      w[(m, n)] = wk - lr * gk
    history.append({k: v.copy() for k, v in w.items()})
    fractions.append(clipped / units if units else None)
  return history, fractions


@pytest.mark.parametrize('overrides', [
    {},  # The paper's recipe.
    dict(nesterov=False, clip_exclude='head', momentum=0.5),
    dict(clip_mode='global_norm', clipping=0.05),
    dict(clipping=None, clip_exclude='none'),
    dict(clip_mode='none'),  # How the command line turns clipping off.
], ids=['paper', 'heavyball_head', 'global_norm', 'no_clip', 'clip_mode_none'])
def test_trajectory_equals_update_rule(overrides):
  params = small_nfnet_params()
  config = optim.get_config()
  config.warmup_epochs = 2.0
  config.weight_decay = 0.01  # Large enough to matter over a few steps.
  config.update(overrides)
  batch, total, spe, steps = 512, 8, 1.25, 8  # 2.5 warmup steps, cosine to 0 at step 8.
  grads_seq = gradient_sequence(params, steps)
  want, want_fractions = reference_run(params, grads_seq, config.to_dict(), batch, total, spe)

  tx = optim.create(config, global_batch_size=batch, total_steps=total, steps_per_epoch=spe)
  update = jax.jit(tx.update)
  state, p = tx.init(params), params
  for step, grads in enumerate(grads_seq):
    updates, state = update(grads, state, p)
    p = jax.tree_util.tree_map(lambda a, b: a + b, p, updates)
    if step == 0:  # lr = 0 at step 0: the first update only fills the momentum.
      jax.tree_util.tree_map(np.testing.assert_array_equal, p, params)
    for (m, n), ref in want[step].items():
      np.testing.assert_allclose(p[m][n], ref, rtol=2e-5, atol=1e-7, err_msg=f'{step} {m}/{n}')
    fraction = optim.clip_fraction(state)
    if want_fractions[step] is None:
      assert fraction is None
    else:
      assert 0.05 < want_fractions[step] < 0.95  # The test exercises both branches.
      np.testing.assert_allclose(fraction, want_fractions[step], rtol=1e-6)


@pytest.mark.parametrize('name', ['adamw', 'lamb'])
def test_adamw_and_lamb_with_agc_and_decoupled_decay(name):
  params = {'net/~/conv': {'w': jnp.full((1, 1, 2, 3), 2.0), 'gain': jnp.ones(3)},
            'net/~/linear': {'w': jnp.full((3, 4), 0.5), 'b': jnp.ones(4)}}
  config = optim.get_config()
  config.update(name=name, weight_decay=0.1, warmup_epochs=0.0, schedule='constant', lr=0.01)
  tx = optim.create(config, global_batch_size=256, total_steps=10, steps_per_epoch=1.0)
  state = tx.init(params)
  # Zero gradients: only decoupled weight decay moves the decayed weights; gains/biases stay.
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, state = jax.jit(tx.update)(zeros, state, params)
  np.testing.assert_array_equal(updates['net/~/conv']['gain'], 0.0)
  np.testing.assert_array_equal(updates['net/~/linear']['b'], 0.0)
  for key in ('net/~/conv', 'net/~/linear'):
    w = params[key]['w']
    # adamw: -lr * wd * w. lamb: the trust ratio ||w|| / ||wd * w|| turns it into -lr * w.
    want = -0.01 * 0.1 * w if name == 'adamw' else -0.01 * w
    np.testing.assert_allclose(updates[key]['w'], want, rtol=1e-5)
  assert float(optim.clip_fraction(state)) == 0.0
  # Huge gradients: AGC clips every unit except those of the classifier weight.
  huge = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 1e3), params)
  _, state = jax.jit(tx.update)(huge, state, params)
  assert float(optim.clip_fraction(state)) == 1.0
  report = [s for s in jax.tree_util.tree_leaves(state, is_leaf=is_report) if is_report(s)]
  assert int(report[0].num_clipped) == 5  # conv w: 3 units, conv gain: 1, classifier bias: 1.


def is_report(x):
  return isinstance(x, agc.AdaptiveGradClipState)


def test_clip_fraction_is_none_without_a_reporting_agc():
  params = {'net/~/linear': {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}}
  for overrides in (dict(report_clip_fraction=False), dict(clipping=None), dict(clip_mode='none'),
                    dict(clip_mode='global_norm')):
    config = optim.get_config()
    config.update(overrides)
    tx = optim.create(config, global_batch_size=256, total_steps=10, steps_per_epoch=1.0)
    assert optim.clip_fraction(tx.init(params)) is None
