"""The pmapped train step: accumulation equivalence, loss, EMA warm-up, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import models, optim
from nfnet_jax.evaluate import replicate
from nfnet_jax.train import ema_decay_at, ema_update, init_state, make_train_step
from nfnet_jax.train import step as step_lib
from nfnet_jax.train.step import smoothed_cross_entropy

NUM_CLASSES = 10


def test_smoothed_cross_entropy_matches_the_formula():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  targets = jnp.array([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0]])
  got = smoothed_cross_entropy(logits, targets, 0.1)
  smoothed = np.asarray(targets) * 0.9 + 0.1 / 3
  logp = np.asarray(jax.nn.log_softmax(logits))
  np.testing.assert_allclose(got, -(smoothed * logp).sum(-1), rtol=1e-6)


def test_ema_decay_warms_up_like_tf1_and_caps_at_decay():
  steps = jnp.array([0, 1, 10, 1000, 10 ** 7])
  got = np.asarray(jax.vmap(lambda t: ema_decay_at(0.9999, t))(steps))
  want = np.minimum(0.9999, (1 + np.array([0, 1, 10, 1000, 1e7])) / (10 + np.array([0, 1, 10, 1000, 1e7])))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  ema = ema_update({'w': jnp.ones(3), 'n': jnp.array(5)}, {'w': jnp.zeros(3), 'n': jnp.array(7)},
                   jnp.float32(0.25))
  np.testing.assert_allclose(ema['w'], 0.25)
  assert int(ema['n']) == 7                  # integer leaves take the new value


def _setup(per_device):
  model = models.create('nf_resnet50', num_classes=NUM_CLASSES, depth=(1, 1, 1, 1), width=1,
                        stochdepth_rate=0.0, drop_rate=0.0)
  sizes = dict(global_batch_size=32, total_steps=100, steps_per_epoch=10)
  config = optim.get_config()
  optimizer = optim.create(config, **sizes)
  state = jax.jit(lambda rng: init_state(model, optimizer, rng, (per_device, 32, 32, 3)))(
      jax.random.PRNGKey(0))
  step = make_train_step(model, optimizer, schedule=optim.create_schedule(config, **sizes),
                         num_classes=NUM_CLASSES, label_smoothing=0.1, bf16=False, ema_decay=0.99,
                         augment='none')
  return jax.device_get(state), jax.pmap(step, axis_name='batch')


@pytest.mark.slow
def test_accumulated_step_equals_one_large_batch_step():
  devices = jax.local_device_count()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(devices, 8, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(devices, 8)).astype(np.int32)
  state, step = _setup(8)
  # The first update only fills the momentum (lr = 0 at step 0); compare the second one.
  state, _ = step(replicate(state), {'images': images[:, None, ::-1], 'labels': labels[:, None, ::-1]})
  state = jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(state))
  big, big_metrics = step(replicate(state), {'images': images[:, None], 'labels': labels[:, None]})
  accumulated, acc_metrics = step(replicate(state), {
      'images': images.reshape(devices, 2, 4, 32, 32, 3), 'labels': labels.reshape(devices, 2, 4)})
  big, accumulated = jax.device_get((big, accumulated))
  assert int(big.step[0]) == int(accumulated.step[0]) == 2
  moved = 0.0
  for name in ('params', 'ema_params', 'opt_state'):
    for a, b, before in zip(jax.tree.leaves(getattr(accumulated, name)),
                            jax.tree.leaves(getattr(big, name)),
                            jax.tree.leaves(jax.tree.map(lambda x: x[None], getattr(state, name)))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
      if name == 'params':
        moved = max(moved, float(np.abs(b - before).max()))
  assert moved > 1e-4                          # the step did change the params
  for key in ('loss', 'top1', 'top5', 'grad_norm', 'learning_rate'):
    np.testing.assert_allclose(acc_metrics[key], big_metrics[key], rtol=1e-5)
  # Replicas stay identical and metrics are averaged over devices.
  for leaf in jax.tree.leaves(accumulated.params):
    assert np.all(leaf == leaf[:1])
  assert np.all(np.asarray(big_metrics['loss']) == np.asarray(big_metrics['loss'])[0])
  assert 0.0 <= float(big_metrics['clip_fraction'][0]) <= 1.0


def test_global_norm_equals_the_l2_norm_of_all_leaves():
  rng = np.random.default_rng(0)
  tree = {'gain': np.float32(3.0), 'b': rng.standard_normal(7, np.float32),
          'linear': {'w': rng.standard_normal((5, 4), np.float32)},
          'conv': {'w': rng.standard_normal((3, 3, 2, 6), np.float32)}}
  expected = np.sqrt(sum(np.sum(np.square(x.astype(np.float64))) for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(jax.jit(step_lib.global_norm)(tree), expected, rtol=1e-6)
