"""Sharpness-Aware Minimization (Foret, Kleiner, Mobahi & Neyshabur 2021, arXiv:2010.01412).

SAM descends along the gradient taken at the ascended point w + ε̂(w), ε̂(w) = ρ · g / ‖g‖₂ (Eq. 2),
where g is the gradient of the loss alone (no weight decay) at w. The train step
(`train.step.make_train_step`) takes two forward-backward passes per micro-batch with
`sam_rho > 0`; the optimizer (and so AGC and weight decay) acts on the descent gradient only.

Ascent modes (`MODES`): 'device' takes g from each device's own micro-batch, so every micro-batch
of every device is perturbed on its own (m-sharpness, Sec. 4.1, with m = the per-device
micro-batch); 'global' takes g averaged over all micro-batches and devices (one ε̂ for the whole
global batch, like an unsharded SAM step).

Not `optax.contrib.sam`: its opaque mode takes one ascent gradient per `update` call, so under
gradient accumulation ε̂ could not come from each micro-batch; and it wraps the optimizer state,
so a checkpoint of a SAM run would not restore without SAM. Its transparent mode spends a whole
train step (step counter, schedule, EMA, BN statistics, a new batch) on each ascent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ('device', 'global')


def ascent_point(params, grads, rho: float):
  """w + ρ · g / ‖g‖₂ over all leaves (Eq. 2); a zero gradient leaves w unchanged."""
  leaves = jax.tree.leaves(grads)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
  scale = rho / jnp.maximum(norm, 1e-12)
  return jax.tree.map(lambda w, g: w + (scale * g.astype(jnp.float32)).astype(w.dtype),
                      params, grads)


def check(rho, mode) -> None:
  """Raises a one-line ValueError for a bad SAM setting."""
  if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho < float('inf'):
    raise ValueError(f'sam_rho={rho!r} must be a finite number >= 0 (0 turns SAM off).')
  if mode not in MODES:
    raise ValueError(f'sam_mode={mode!r} must be one of {list(MODES)}.')
