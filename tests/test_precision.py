"""The compute-dtype policy: bf16 where the backend has bf16 kernels; for a bf16 request on CPU, float32
with the convolutions in bf16 where oneDNN has bf16 kernels, plain float32 where not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import evaluate, models, onednn, optim, precision
from nfnet_jax.train import init_state, make_train_step

NUM_CLASSES = 10


@pytest.fixture
def no_bf16_convs(monkeypatch):
  """As on a CPU where oneDNN has no bf16 kernels (or is not installed)."""
  monkeypatch.setattr(onednn, 'native_bf16', lambda: False)


def test_policy_keeps_bf16_on_accelerators_and_says_when_it_computes_in_float32(no_bf16_convs):
  for platform in ('gpu', 'tpu'):
    assert precision.compute_dtype(True, platform=platform) == jnp.bfloat16
    assert precision.note(True, platform=platform) is None
  assert precision.compute_dtype(True, platform='cpu') == jnp.float32
  assert precision.compute_dtype(True, platform='cpu', cpu_bf16=True) == jnp.bfloat16
  assert precision.compute_dtype(False, platform='gpu', cpu_bf16=True) == jnp.float32
  assert 'computing in float32 on cpu' in precision.note(True, platform='cpu')
  assert precision.note(True, platform='cpu', cpu_bf16=True) is None
  assert precision.note(False, platform='cpu') is None
  assert not precision.bf16_convs(True, platform='cpu')


def test_policy_runs_convs_in_bf16_where_onednn_has_bf16_kernels(monkeypatch):
  monkeypatch.setattr(onednn, 'native_bf16', lambda: True)
  assert precision.compute_dtype(True, platform='cpu') == jnp.float32
  assert precision.bf16_convs(True, platform='cpu')
  assert not precision.bf16_convs(True, platform='cpu', cpu_bf16=True)  # bf16 everywhere instead
  assert not precision.bf16_convs(True, platform='gpu') and not precision.bf16_convs(False, platform='cpu')
  assert 'convolutions compute in bf16 on oneDNN' in precision.note(True, platform='cpu')


def _model():
  return models.create('nf_resnet50', num_classes=NUM_CLASSES, depth=(1, 1, 1, 1), width=1,
                       stochdepth_rate=0.0, drop_rate=0.0)


def _steps(model, **kwargs):
  sizes = dict(global_batch_size=8, total_steps=100, steps_per_epoch=10)
  config = optim.get_config()
  optimizer = optim.create(config, **sizes)
  state = jax.jit(lambda rng: init_state(model, optimizer, rng, (4, 32, 32, 3)))(jax.random.PRNGKey(0))
  step = make_train_step(model, optimizer, schedule=optim.create_schedule(config, **sizes),
                         num_classes=NUM_CLASSES, label_smoothing=0.1, ema_decay=0.99, augment='none', **kwargs)
  return jax.device_get(state), jax.pmap(step, axis_name='batch', devices=jax.local_devices()[:1])


@pytest.mark.slow  # three train-step compiles
def test_bf16_request_on_cpu_equals_float32_and_cpu_bf16_rounds_to_bf16(no_bf16_convs):
  rng = np.random.default_rng(0)
  batch = {'images': rng.normal(size=(1, 1, 4, 32, 32, 3)).astype(np.float32),
           'labels': rng.integers(0, NUM_CLASSES, size=(1, 1, 4)).astype(np.int32)}
  model = _model()
  outputs = {}
  for name, kwargs in {'f32': dict(bf16=False), 'bf16': dict(bf16=True),
                       'emulated': dict(bf16=True, cpu_bf16=True)}.items():
    state, step = _steps(model, **kwargs)
    state = jax.tree.map(lambda x: np.asarray(x)[None], state)
    for _ in range(2):  # lr is 0 at step 0; the second step moves the params
      state, metrics = step(state, batch)
    outputs[name] = jax.device_get((state.params, metrics['loss']))
  for a, b in zip(jax.tree.leaves(outputs['f32']), jax.tree.leaves(outputs['bf16'])):
    np.testing.assert_array_equal(a, b)  # the same float32 computation
  differs = False
  for a, b in zip(jax.tree.leaves(outputs['f32']), jax.tree.leaves(outputs['emulated'])):
    np.testing.assert_allclose(a, b, rtol=0.05, atol=2e-3)
    differs |= not np.array_equal(a, b)
  assert differs  # cpu_bf16 does compute in bf16


@pytest.mark.slow  # two train-step compiles
def test_bf16_convs_round_the_float32_step_to_bf16():
  if not onednn.native_bf16():
    pytest.skip(f'oneDNN has no bf16 kernels here ({onednn.reason() or onednn.kernel(jnp.bfloat16)})')
  rng = np.random.default_rng(0)
  batch = {'images': rng.normal(size=(1, 1, 4, 32, 32, 3)).astype(np.float32),
           'labels': rng.integers(0, NUM_CLASSES, size=(1, 1, 4)).astype(np.int32)}
  outputs = {}
  for name, bf16 in {'f32': False, 'bf16': True}.items():
    state, step = _steps(_model(), bf16=bf16)
    state = jax.tree.map(lambda x: np.asarray(x)[None], state)
    for _ in range(2):
      state, metrics = step(state, batch)
    outputs[name] = jax.device_get((state.params, metrics['loss']))
  differs = False
  for a, b in zip(jax.tree.leaves(outputs['f32']), jax.tree.leaves(outputs['bf16'])):
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0.05, atol=2e-3)
    differs |= not np.array_equal(a, b)
  assert differs


def test_eval_step_follows_the_policy(no_bf16_convs):
  model = _model()
  images = np.random.default_rng(1).normal(size=(1, 2, 32, 32, 3)).astype(np.float32)
  params, state = jax.jit(lambda r: model.init(r, jnp.asarray(images[0]), is_training=True))(jax.random.PRNGKey(0))
  batch = {'images': images, 'labels': np.zeros((1, 2), np.int32), 'mask': np.ones((1, 2), bool)}
  params, state = jax.tree.map(lambda x: np.asarray(x)[None], (params, state))
  sums = {name: jax.device_get(evaluate.make_eval_step(model, **kw)(params, state, batch))
          for name, kw in {'f32': {}, 'bf16': dict(bf16=True), 'emulated': dict(bf16=True, cpu_bf16=True)}.items()}
  assert sums['f32']['loss'] == sums['bf16']['loss']
  np.testing.assert_allclose(sums['emulated']['loss'], sums['f32']['loss'], rtol=0.05)
  assert sums['emulated']['loss'] != sums['f32']['loss']
