"""SAM in the train step (nfnet_jax.sam): one step equals the two-pass computation written out by
hand, in both ascent modes, with gradient accumulation and AGC; BN statistics come from the pass
at w; sam_rho=0 is the plain step; bad settings are refused."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import optim, sam
from nfnet_jax.train import init_state, make_train_step
from nfnet_jax.train.step import smoothed_cross_entropy

DEVICES, ACCUM, PER = 2, 2, 3
RHO = 0.5
OPT = dict(lr=4.0, warmup_epochs=0.0, weight_decay=0.1, clipping=0.01, schedule='constant')
SIZES = dict(global_batch_size=DEVICES * ACCUM * PER, total_steps=10, steps_per_epoch=1.0)


class Net(hk.Module):
  """conv → BN → relu → mean → linear: a BN model small enough to write SAM out by hand."""

  def __init__(self):
    super().__init__(name='net')
    self.conv = hk.Conv2D(4, 3, name='conv')
    self.bn = hk.BatchNorm(True, True, 0.9, name='bn')
    self.linear = hk.Linear(3, name='linear')

  def __call__(self, images, is_training):
    x = jax.nn.relu(self.bn(self.conv(images), is_training))
    return {'logits': self.linear(jnp.mean(x, axis=(1, 2)))}


MODEL = hk.transform_with_state(lambda images, is_training=True, return_metrics=False:
                                Net()(images, is_training))
OPTIMIZER = optim.create(OPT, **SIZES)
IMAGES = np.random.default_rng(0).normal(size=(DEVICES, ACCUM, PER, 6, 6, 2)).astype(np.float32)
LABELS = np.random.default_rng(1).integers(0, 3, size=(DEVICES, ACCUM, PER)).astype(np.int32)


@pytest.fixture(scope='module')
def state0():
  return jax.device_get(jax.jit(lambda rng: init_state(MODEL, OPTIMIZER, rng, (PER, 6, 6, 2)))(
      jax.random.PRNGKey(0)))


def _step(state, **sam_kw):
  step = make_train_step(MODEL, OPTIMIZER, schedule=optim.create_schedule(OPT, **SIZES),
                         num_classes=3, label_smoothing=0.0, bf16=False, ema_decay=0.0,
                         augment='none', **sam_kw)
  devices = jax.local_devices()[:DEVICES]
  new, metrics = jax.pmap(step, axis_name='batch', devices=devices)(
      jax.tree.map(lambda x: np.stack([x] * DEVICES), state), {'images': IMAGES, 'labels': LABELS})
  return jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get((new, metrics)))


def _loss(params, model_state, images, labels):
  out, new_state = MODEL.apply(params, model_state, None, images)
  return jnp.mean(smoothed_cross_entropy(out['logits'], jax.nn.one_hot(labels, 3), 0.0)), new_state


_grad = jax.jit(jax.grad(_loss, has_aux=True))
_mean = lambda trees: jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def _hand_step(state, mode):
  """SAM written out: ε = ρ g/‖g‖ from the loss gradient (no weight decay), descent gradient at
  w + ε averaged over micro-batches and devices, then the optimizer (AGC, decay, momentum)."""
  w = state.params
  norm = lambda g: np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
  plus = lambda g: jax.tree.map(lambda p, x: p + RHO * x / norm(g), w, g)
  descent, stats = [], []
  for d in range(DEVICES):
    ms = state.model_state
    for k in range(ACCUM):  # BN statistics threaded through the passes at w only
      g, new_ms = _grad(w, ms, IMAGES[d, k], LABELS[d, k])
      if mode == 'device':
        descent.append(_grad(plus(g), ms, IMAGES[d, k], LABELS[d, k])[0])
      ms = new_ms
    stats.append(ms)
  if mode == 'global':
    g = _mean([_grad(w, state.model_state, IMAGES[d, k], LABELS[d, k])[0]
               for d in range(DEVICES) for k in range(ACCUM)])
    descent = [_grad(plus(g), state.model_state, IMAGES[d, k], LABELS[d, k])[0]
               for d in range(DEVICES) for k in range(ACCUM)]
  updates, _ = OPTIMIZER.update(_mean(descent), state.opt_state, w)
  return jax.tree.map(lambda p, u: p + u, w, updates), _mean(stats)


def _close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **tol)


@pytest.mark.parametrize('mode', sam.MODES)
def test_sam_step_equals_the_two_pass_computation_by_hand(state0, mode):
  new, metrics = _step(state0, sam_rho=RHO, sam_mode=mode)
  params, stats = _hand_step(state0, mode)
  _close(new.params, params, rtol=2e-5, atol=1e-6)
  _close(new.model_state, stats, rtol=1e-5, atol=1e-7)
  assert 0 < metrics['clip_fraction'] <= 1  # AGC clipped the descent gradient here
  plain, plain_metrics = _step(state0)
  # The loss reported is the one at w, and SAM moved the weights elsewhere.
  assert metrics['loss'] == pytest.approx(float(plain_metrics['loss']), rel=1e-6)
  assert max(np.abs(a - b).max() for a, b in
             zip(jax.tree.leaves(new.params), jax.tree.leaves(plain.params))) > 1e-4


def test_the_two_modes_differ_and_rho_zero_is_the_plain_step(state0):
  device, _ = _step(state0, sam_rho=RHO, sam_mode='device')
  glob, _ = _step(state0, sam_rho=RHO, sam_mode='global')
  assert max(np.abs(a - b).max() for a, b in
             zip(jax.tree.leaves(device.params), jax.tree.leaves(glob.params))) > 1e-5
  plain, m = _step(state0)
  off, m_off = _step(state0, sam_rho=0.0, sam_mode='global')
  for a, b in zip(jax.tree.leaves((plain, m)), jax.tree.leaves((off, m_off))):
    np.testing.assert_array_equal(a, b)


def test_ascent_point_and_bad_settings():
  w = {'a': jnp.ones(3), 'b': jnp.zeros((2,))}
  g = {'a': jnp.array([3.0, 0.0, 0.0]), 'b': jnp.array([0.0, 4.0])}
  out = sam.ascent_point(w, g, 0.5)
  np.testing.assert_allclose(out['a'], [1.3, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(out['b'], [0.0, 0.4], rtol=1e-6)
  zero = sam.ascent_point(w, jax.tree.map(jnp.zeros_like, g), 0.5)
  _close(zero, w, rtol=0)
  with pytest.raises(ValueError, match='sam_rho'):
    sam.check(-0.1, 'device')
  with pytest.raises(ValueError, match='sam_mode'):
    sam.check(0.05, 'local')
  with pytest.raises(ValueError, match='sam_mode'):
    optim.create(dict(OPT, sam_mode='local'), **SIZES)
