"""Compute dtype of the train and eval steps: the recipe's bfloat16 where the backend runs it natively.

The NFNet recipe computes in bfloat16 over float32 master weights. XLA:CPU (jaxlib 0.10.2) has no
bfloat16 kernels for matrix products or convolutions: it converts both operands to float32, runs the
float32 kernel and rounds the result back to bfloat16, so every bf16 conv costs a float32 conv plus
three conversion passes (the F0 training step ran 1.2x slower in bf16 than in float32). On CPU a bf16
request therefore computes in float32 (the same products without the rounding, and faster) unless
``cpu_bf16=True`` asks for the emulated bf16 numerics. GPUs and TPUs always get what was asked.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

# Backends whose XLA computes bf16 dots and convolutions by converting them to float32.
EMULATED_BF16 = ("cpu",)


def compute_dtype(bf16: bool, *, cpu_bf16: bool = False, platform: Optional[str] = None):
  """bfloat16 when asked for and the backend has native bf16 kernels (or ``cpu_bf16``), else float32."""
  platform = platform or jax.default_backend()
  if bf16 and (cpu_bf16 or platform not in EMULATED_BF16):
    return jnp.bfloat16
  return jnp.float32


def note(bf16: bool, *, cpu_bf16: bool = False, platform: Optional[str] = None) -> Optional[str]:
  """The log line saying that a bf16 request computes in float32 on this backend; None otherwise."""
  platform = platform or jax.default_backend()
  if not bf16 or compute_dtype(bf16, cpu_bf16=cpu_bf16, platform=platform) == jnp.bfloat16:
    return None
  return (f"bf16 requested; computing in float32 on {platform}: XLA:{platform.upper()} has no bf16 "
          "conv/matmul kernels (it converts to float32 and back, which is slower), so float32 is faster "
          "and more precise; GPU/TPU runs compute in bf16.")
