"""The max pool's gradient in one native pass on CPU (NF-ResNets' and ResNets' stem pool).

XLA:CPU runs `layers.max_pool`'s hand-written backward (the winning tap per window, then shifted
sums) over window² copies of the input: 25 / 31 ms at NF-ResNet-50's stem pool (batch 8, 128 px,
float32; two runs, side by side) against 2.8 / 3.9 ms for one pass over x and dy here
(`pool_grad.cc`, built by `nfnet_jax.native`). Optional: `available()` is False off CPU, without
a C++ compiler, or with ``NFNET_JAX_POOL_GRAD=0``; `reason()` says why, and `layers.max_pool`
keeps its XLA backward.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import native

SOURCE, TARGET = "pool_grad.cc", "NfnetMaxPoolGrad"


def _load():
  if os.environ.get("NFNET_JAX_POOL_GRAD", "1") == "0":
    return None, "turned off by NFNET_JAX_POOL_GRAD=0"
  return native.load(SOURCE, (TARGET,), ("-O3",))


def available() -> bool:
  """True when the native max pool gradient is built and registered for this (CPU) backend."""
  return _load()[0] is not None


def reason() -> str:
  """Why `available()` is False ('' when it is True)."""
  return _load()[1]


def supports(x: jax.Array) -> bool:
  """Whether `max_pool_grad` takes this input: float32 or bf16, NHWC."""
  return available() and x.ndim == 4 and x.dtype in (jnp.float32, jnp.bfloat16)


def max_pool_grad(x: jax.Array, dy: jax.Array, *, window: int, stride: int, pad_top: int,
                  pad_left: int) -> jax.Array:
  """dx of a window²/stride max pool of NHWC `x` padded by (pad_top, pad_left) at its start, given dy."""
  if not available():
    raise RuntimeError(f"the native max pool gradient is not available: {reason()}.")
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method="sequential")
  return call(x, dy.astype(x.dtype), window=np.int64(window), stride=np.int64(stride),
              pt=np.int64(pad_top), pl=np.int64(pad_left))
