"""oneDNN convolutions for XLA:CPU: the kernels PyTorch runs on CPU, called from jitted JAX code.

XLA:CPU (jaxlib 0.10) runs convolutions at about half of oneDNN's float32 rate and has no bf16
kernels at all (it converts to float32 and back), while oneDNN runs bf16 on AMX / AVX512_BF16.
`conv2d` calls oneDNN's forward, input-gradient and weight-gradient primitives through the XLA FFI
(`onednn_conv.cc`, compiled on first use against the system's oneDNN, e.g. Debian's
`libdnnl-dev`, and cached by `nfnet_jax.native`). Optional: where no compiler or oneDNN is
found, `available()` is False, `reason()` says why, and `layers.conv2d` keeps XLA's own
convolutions. ``NFNET_JAX_ONEDNN=0`` turns it off; ``NFNET_JAX_ONEDNN_ROOT`` names a oneDNN install
(its include/ and lib/).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import native

SOURCE = "onednn_conv.cc"
TARGETS = {"forward": "NfnetConvForward", "input_grad": "NfnetConvInputGrad",
           "weight_grad": "NfnetConvWeightGrad", "matmul": "NfnetMatmul"}
DTYPES = (jnp.float32, jnp.bfloat16)


def _flags() -> tuple[str, ...]:
  root = os.environ.get("NFNET_JAX_ONEDNN_ROOT")
  if not root:
    return ()
  lib = os.path.join(root, "lib")
  return ("-I", os.path.join(root, "include"), "-L", lib, f"-Wl,-rpath,{lib}")


def _load() -> tuple[ctypes.CDLL | None, str]:
  """(the compiled, registered library, '') or (None, why not)."""
  if os.environ.get("NFNET_JAX_ONEDNN", "1") == "0":
    return None, "turned off by NFNET_JAX_ONEDNN=0"
  return native.load(SOURCE, tuple(TARGETS.values()), _flags(), ("dnnl",), what="against oneDNN",
                     needs="g++ and oneDNN (libdnnl-dev)")


def available() -> bool:
  """True when oneDNN's convolutions are built, loaded and registered for this (CPU) backend."""
  return _load()[0] is not None


def reason() -> str:
  """Why `available()` is False ('' when it is True)."""
  return _load()[1]


@functools.cache
def kernel(dtype=jnp.float32) -> str:
  """oneDNN's kernel for a 3×3 conv in `dtype`, e.g. 'brgconv:avx512_core_amx_bf16' ('' if none)."""
  lib = _load()[0]
  if lib is None:
    return ""
  buf = ctypes.create_string_buffer(256)
  ok = lib.NfnetConvKernelName(int(jnp.dtype(dtype) == jnp.bfloat16), buf, len(buf)) == 0
  return buf.value.decode() if ok else ""


def native_bf16() -> bool:
  """Whether oneDNN runs bf16 convolutions on bf16 hardware here (AMX or AVX512_BF16), not emulated."""
  name = kernel(jnp.bfloat16)
  return any(isa in name for isa in ("amx", "avx512_core_bf16", "avx10"))


def describe() -> str | None:
  """One log line on what conv_impl='auto' runs on this CPU backend (None on GPU/TPU)."""
  if jax.default_backend() != "cpu":
    return None
  if not available():
    return f"oneDNN not available ({reason()}): conv_impl='auto' uses XLA's convolutions"
  return (f"conv_impl='auto' runs convolutions on oneDNN (float32: {kernel(jnp.float32)}, "
          f"bf16: {kernel(jnp.bfloat16) or 'none'})")


def supports(x: jax.Array, w: jax.Array, rate: Sequence[int]) -> bool:
  """Whether `conv2d` takes these operands: float32 or bf16 alike, 4-D, undilated."""
  return (available() and x.ndim == 4 and w.ndim == 4 and x.dtype == w.dtype
          and any(x.dtype == d for d in DTYPES) and tuple(rate) == (1, 1)
          and kernel(x.dtype) != "")


def _call(pass_: str, out_shape, dtype, a, b, attrs):
  out = jax.ShapeDtypeStruct(tuple(out_shape), dtype)
  return jax.ffi.ffi_call(TARGETS[pass_], out, vmap_method="sequential")(a, b, **attrs)


def _attrs(geometry):
  (sh, sw), ((pt, pb), (pl, pr)), groups = geometry
  return {k: np.int64(v) for k, v in
          dict(sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr, groups=groups).items()}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, geometry):
  (sh, sw), ((pt, pb), (pl, pr)), groups = geometry
  oh = (x.shape[1] + pt + pb - w.shape[0]) // sh + 1
  ow = (x.shape[2] + pl + pr - w.shape[1]) // sw + 1
  return _call("forward", (x.shape[0], oh, ow, w.shape[3]), x.dtype, x, w, _attrs(geometry))


def _conv_fwd(x, w, geometry):
  return _conv(x, w, geometry), (x, w)


def _conv_bwd(geometry, res, dy):
  x, w = res
  dy = dy.astype(x.dtype)
  dx = _call("input_grad", x.shape, x.dtype, dy, w, _attrs(geometry))
  dw = _call("weight_grad", w.shape, w.dtype, x, dy, _attrs(geometry))
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, w: jax.Array, *, stride: Sequence[int] = (1, 1),
           padding: str | Sequence[tuple[int, int]] = "SAME", groups: int = 1) -> jax.Array:
  """NHWC × HWIO convolution with `groups` feature groups on oneDNN (differentiable; see `supports`)."""
  if not available():
    raise RuntimeError(f"oneDNN convolutions are not available: {reason()}.")
  stride = tuple(int(s) for s in stride)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], w.shape[:2], stride, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(x, w, (stride, pads, int(groups)))


def _matmul_call(a, b, transpose_a: bool = False, transpose_b: bool = False):
  m = a.shape[1] if transpose_a else a.shape[0]
  n = b.shape[0] if transpose_b else b.shape[1]
  out = jax.ShapeDtypeStruct((m, n), a.dtype)
  return jax.ffi.ffi_call(TARGETS["matmul"], out, vmap_method="sequential")(
      a, b, transpose_a=np.int64(transpose_a), transpose_b=np.int64(transpose_b))


@jax.custom_vjp
def _matmul(a, b):
  return _matmul_call(a, b)


def _matmul_fwd(a, b):
  return _matmul_call(a, b), (a, b)


def _matmul_bwd(res, dc):
  a, b = res
  dc = dc.astype(a.dtype)
  return _matmul_call(dc, b, transpose_b=True), _matmul_call(a, dc, transpose_a=True)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """[M, K] × [K, N] matrix product on oneDNN (differentiable; float32 or bf16 alike)."""
  if not available():
    raise RuntimeError(f"oneDNN is not available: {reason()}.")
  return _matmul(a, b)
