"""The train state and its exponential moving average."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
  """Everything one optimizer step reads and writes; a checkpoint holds exactly this."""
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # float32 master weights
  model_state: Any         # e.g. BatchNorm moving statistics; empty for NF models
  opt_state: Any
  ema_params: Any
  ema_model_state: Any
  rng: jax.Array           # base key; step t uses fold_in(rng, t)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """TF1-style warm-up of the EMA decay: min(decay, (1 + t) / (10 + t))."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema: Any, new: Any, decay: jax.Array) -> Any:
  """ema <- decay * ema + (1 - decay) * new on floating leaves; other leaves take `new`."""
  def one(e, n):
    if not jnp.issubdtype(n.dtype, jnp.floating):
      return n
    return (decay * e.astype(jnp.float32) + (1.0 - decay) * n.astype(jnp.float32)).astype(n.dtype)
  return jax.tree.map(one, ema, new)


def init_state(model, optimizer: optax.GradientTransformation, rng: jax.Array,
               image_shape: tuple[int, ...]) -> TrainState:
  """Initialises params, model state, optimizer state and EMA copies (pure; jit it)."""
  init_rng, train_rng = jax.random.split(rng)
  params, model_state = model.init(init_rng, jnp.zeros(image_shape, jnp.float32), is_training=True)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params), ema_params=params,
                    ema_model_state=model_state, rng=train_rng)
