"""Compute dtype of the train and eval steps: the recipe's bfloat16 where the backend runs it natively.

The NFNet recipe computes in bfloat16 over float32 master weights. XLA:CPU (jaxlib 0.10.2) has no
bfloat16 kernels for matrix products, convolutions or elementwise ops: it converts to float32, runs
the float32 kernel and rounds back, so a bf16 step on XLA alone is slower than a float32 one. On CPU a
bf16 request therefore computes in float32, and where oneDNN runs bf16 convolutions on bf16 hardware
(AMX, AVX512_BF16; `nfnet_jax.onednn`) the convolutions compute in bf16 (operands and result
rounded to bf16, float32 accumulation, as in the recipe), which is where bf16 saves time. ``cpu_bf16=True`` asks for
bf16 everywhere (XLA's emulation). GPUs and TPUs always get what was asked.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import jax
import jax.numpy as jnp

from nfnet_jax import onednn

# Backends whose XLA computes bf16 dots and convolutions by converting them to float32.
EMULATED_BF16 = ("cpu",)


def compute_dtype(bf16: bool, *, cpu_bf16: bool = False, platform: Optional[str] = None):
  """bfloat16 when asked for and the backend has native bf16 kernels (or ``cpu_bf16``), else float32."""
  platform = platform or jax.default_backend()
  if bf16 and (cpu_bf16 or platform not in EMULATED_BF16):
    return jnp.bfloat16
  return jnp.float32


def bf16_convs(bf16: bool, *, cpu_bf16: bool = False, platform: Optional[str] = None) -> bool:
  """Whether a bf16 request that computes in float32 still runs its convolutions in bf16 (oneDNN)."""
  platform = platform or jax.default_backend()
  return (bf16 and compute_dtype(bf16, cpu_bf16=cpu_bf16, platform=platform) == jnp.float32
          and platform == "cpu" and onednn.native_bf16())


def scope(bf16: bool, *, cpu_bf16: bool = False):
  """The context to trace a model's forward pass in: bf16 convolutions where `bf16_convs`."""
  if bf16_convs(bf16, cpu_bf16=cpu_bf16):
    return jax.default_matmul_precision("bfloat16")  # read by layers.conv2d
  return contextlib.nullcontext()


def note(bf16: bool, *, cpu_bf16: bool = False, platform: Optional[str] = None) -> Optional[str]:
  """The log line saying how a bf16 request computes on this backend; None where it is plain bf16."""
  platform = platform or jax.default_backend()
  if not bf16 or compute_dtype(bf16, cpu_bf16=cpu_bf16, platform=platform) == jnp.bfloat16:
    return None
  if bf16_convs(bf16, cpu_bf16=cpu_bf16, platform=platform):
    return (f"bf16 requested; on {platform} the convolutions compute in bf16 on oneDNN "
            f"({onednn.kernel(jnp.bfloat16)}) and the rest computes in float32: XLA:{platform.upper()} "
            "has no bf16 kernels (it converts to float32 and back, which is slower); GPU/TPU runs "
            "compute in bf16.")
  return (f"bf16 requested; computing in float32 on {platform}: XLA:{platform.upper()} has no bf16 "
          "conv/matmul kernels (it converts to float32 and back, which is slower), so float32 is faster "
          "and more precise; GPU/TPU runs compute in bf16.")
