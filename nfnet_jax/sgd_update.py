"""The default NFNet update in one pass per parameter on CPU: AGC, weight decay, Nesterov SGD, EMA.

XLA:CPU computes the clipped gradient's norms, the new momentum, the new weights and their EMA
in separate loops that each re-read the old buffers (about 15 passes over every parameter's
size, memory-bound, run beside the backward pass's convolutions); `update` does it in one C++
call after the backward pass (`sgd_update.cc`: 9 passes, one thread per core).
`optim.create_fused` builds the train step's update from it for the config of `optim.create`.
Optional: `available()` is False off CPU, without a C++ compiler, or with
``NFNET_JAX_FUSED_UPDATE=0``; `reason()` says why, and the train step keeps optax's update.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import native

SOURCE, TARGET = "sgd_update.cc", "NfnetSgdUpdate"


def _load():
  if os.environ.get("NFNET_JAX_FUSED_UPDATE", "1") == "0":
    return None, "turned off by NFNET_JAX_FUSED_UPDATE=0"
  return native.load(SOURCE, (TARGET,), ("-O3",))


def available() -> bool:
  """True when the fused update is built and registered for this (CPU) backend."""
  return _load()[0] is not None


def reason() -> str:
  """Why `available()` is False ('' when it is True)."""
  return _load()[1]


def update(w, g, m, e, lr, decay, *, units: Sequence[int], clipping: Sequence[float],
           weight_decay: Sequence[float], eps: float, momentum: float, nesterov: bool):
  """Every parameter's update in one call (see `sgd_update.cc`): w, g, m, e are lists of float32
  arrays (one per leaf), `lr` and `decay` scalars.

  Per leaf: `units`, its AGC units along the minor axis (their count) or 1 (the leaf is one unit);
  `clipping`, AGC's threshold (0: unclipped); `weight_decay`, its coupled weight decay. Returns
  (w, m, e, stats): the new lists and stats = [Σ g² before clipping, units clipped].
  """
  if not available():
    raise RuntimeError(f"the fused update is not available: {reason()}.")
  shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in w]
  call = jax.ffi.ffi_call(TARGET, shapes * 3 + [jax.ShapeDtypeStruct((2,), jnp.float32)],
                          vmap_method="sequential")
  outs = call(jnp.asarray(lr, jnp.float32), jnp.asarray(decay, jnp.float32), *w, *g, *m, *e,
              units=np.asarray(units, np.int64), clipping=np.asarray(clipping, np.float32),
              wd=np.asarray(weight_decay, np.float32), eps=np.float32(eps), mu=np.float32(momentum),
              nesterov=np.int64(nesterov))
  n = len(w)
  return list(outs[:n]), list(outs[n:2 * n]), list(outs[2 * n:3 * n]), outs[-1]
