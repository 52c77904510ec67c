"""The fused CPU update (nfnet_jax.sgd_update, optim.create_fused) against its twin, optax's chain."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import native_required

from nfnet_jax import models, optim, sgd_update
from nfnet_jax.evaluate import replicate
from nfnet_jax.train import ema_update, init_state, make_train_step
from nfnet_jax.train.step import global_norm

SIZES = dict(global_batch_size=256, total_steps=100, steps_per_epoch=10)


@pytest.fixture
def require_fused():
  native_required.require(sgd_update.available(), sgd_update.reason(), "the fused update")


def _params():
  # Haiku layouts of every kind the optimizer sees: a conv kernel (units on the last axis), its
  # gain and bias (one unit each, no weight decay), a scalar skip gain, the classifier (not clipped).
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {"net/~/conv": {"w": f(3, 3, 4, 8) * 0.2, "gain": f(8) + 1.0, "b": f(8) * 0.1},
          "net/~/block": {"skip_gain": f()},
          "net/~/linear": {"w": f(8, 10) * 0.1, "b": f(10) * 0.0}}


def _close(a, b, rtol):
  # Per leaf, relative to its largest value: the two round differently, e.g. norms in double here.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    scale = max(float(jnp.max(jnp.abs(x))), 1e-30)
    assert float(jnp.max(jnp.abs(x - y))) <= rtol * scale


@pytest.mark.parametrize("overrides", [{}, {"clip_exclude": "none"}, {"clipping": None},
                                       {"weight_decay": 0.0}, {"nesterov": False},
                                       {"report_clip_fraction": False}, {"clipping": 10.0}])
def test_fused_update_equals_optax_chain_apply_and_ema(require_fused, overrides):
  config = optim.get_config()
  config.update(overrides)
  config.weight_decay = overrides.get("weight_decay", 0.05)  # large enough to show in 5 steps
  optimizer, fused = optim.create(config, **SIZES), jax.jit(optim.create_fused(config, **SIZES))

  @jax.jit
  def twin(grads, opt_state, params, ema, decay):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, ema_update(ema, params, decay), global_norm(grads)

  params = _params()
  ours = theirs = (params, optimizer.init(params), jax.tree.map(lambda x: 0.5 * x, params))  # p, s, ema
  rng = np.random.default_rng(1)
  clipped = []
  for step in range(5):  # large and small gradients: AGC clips some steps, not others
    grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
                         * (1.0 if step % 2 else 1e-3), params)
    *theirs, norm_theirs = twin(grads, theirs[1], theirs[0], theirs[2], jnp.float32(0.9))
    *ours, norm_ours = fused(grads, ours[1], ours[0], ours[2], jnp.float32(0.9))
    np.testing.assert_allclose(norm_ours, norm_theirs, rtol=1e-6)
    assert jax.tree.structure(ours[1]) == jax.tree.structure(theirs[1])  # checkpoints interchange
    _close(ours, theirs, 1e-5)
    reports = [[float(x) for x in jax.tree.leaves(state[1][0])] for state in (ours, theirs)]
    assert reports[0] == reports[1]  # AGC's report (fraction, units clipped, units), if any
    clipped.append(reports[0][1] if reports[0] else 0.0)
  assert (max(clipped) > 0) == bool(reports[0])
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ours[0]),
                                                               jax.tree.leaves(params)))
  assert moved > 1e-3


def test_fused_update_applies_only_to_what_it_computes(require_fused, monkeypatch):
  config = optim.get_config()
  assert optim.create_fused(config, **SIZES) is not None
  for overrides in ({"name": "adamw"}, {"clip_mode": "global_norm"}, {"momentum": 0.0}):
    other = optim.get_config()
    other.update(overrides)
    assert optim.create_fused(other, **SIZES) is None, overrides
  assert optim.create_fused(config, trainable="linear", **SIZES) is None
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  with pytest.raises(ValueError, match="float32"):
    optim.create_fused(config, **SIZES)(bf16, None, bf16, bf16, 0.9)
  monkeypatch.setenv("NFNET_JAX_FUSED_UPDATE", "0")
  assert not sgd_update.available() and "NFNET_JAX_FUSED_UPDATE=0" in sgd_update.reason()
  assert optim.create_fused(config, **SIZES) is None


def test_train_step_with_fused_update_equals_the_optax_step(require_fused):
  model = models.create("nf_resnet50", num_classes=10, depth=(1, 1, 1, 1), width=1,
                        stochdepth_rate=0.0, drop_rate=0.0)
  config = optim.get_config()
  optimizer, schedule = optim.create(config, **SIZES), optim.create_schedule(config, **SIZES)
  state = jax.device_get(jax.jit(lambda r: init_state(model, optimizer, r, (4, 32, 32, 3)))(
      jax.random.PRNGKey(0)))
  steps = [jax.pmap(make_train_step(model, optimizer, schedule=schedule, num_classes=10,
                                    label_smoothing=0.1, bf16=False, ema_decay=0.99, augment="none",
                                    fused_update=fused), axis_name="batch")
           for fused in (None, optim.create_fused(config, **SIZES))]
  rng = np.random.default_rng(0)
  states, n = [replicate(state)] * 2, jax.local_device_count()
  for _ in range(3):  # the first step only fills the momentum (lr = 0 at step 0)
    batch = {"images": rng.normal(size=(n, 1, 4, 32, 32, 3)).astype(np.float32),
             "labels": rng.integers(0, 10, (n, 1, 4)).astype(np.int32)}
    (theirs, m_theirs), (ours, m_ours) = [step(s, batch) for step, s in zip(steps, states)]
    states = [theirs, ours]
    for key in ("loss", "grad_norm", "clip_fraction", "learning_rate"):
      np.testing.assert_allclose(m_ours[key], m_theirs[key], rtol=1e-5)
  theirs, ours = jax.device_get((theirs, ours))
  for name in ("params", "ema_params", "opt_state"):
    _close(getattr(ours, name), getattr(theirs, name), 1e-5)
  assert float(m_ours["clip_fraction"][0]) > 0  # AGC did clip, in both


def test_failed_build_says_why(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-c", "from nfnet_jax import optim, sgd_update\n"
       "print(sgd_update.available(), sgd_update.reason(), sep='|')\n"
       "print(optim.create_fused(optim.get_config(), global_batch_size=8, total_steps=10, "
       "steps_per_epoch=1))\n"],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "CXX": "false", "NFNET_JAX_CACHE": str(tmp_path)})
  assert proc.returncode == 0, proc.stderr
  first, second = proc.stdout.splitlines()[:2]
  assert first.startswith("False|could not build sgd_update.cc") and second == "None"
  assert not list(tmp_path.glob("*.so"))
