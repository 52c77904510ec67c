"""Building blocks of Normalizer-Free networks, each mirroring an equation of the papers.

References:
  [NF-ResNets] Brock, De & Smith 2021, "Characterizing signal propagation to close the
    performance gap in unnormalized ResNets" (arXiv:2101.08692).
  [NFNets] Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image
    Recognition Without Normalization" (arXiv:2102.06171).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import onednn
from nfnet_jax import pool_grad

Array = jax.Array

# ---------------------------------------------------------------------------
# γ-scaled nonlinearities ([NF-ResNets] sec. 4.2; constants as published by DeepMind
# so that released weights reproduce).
# ---------------------------------------------------------------------------

_BASE_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "identity": lambda x: x,
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,  # tanh approximation, as in the official code
    "glu": jax.nn.glu,
    "leaky_relu": jax.nn.leaky_relu,
    "log_sigmoid": jax.nn.log_sigmoid,
    "log_softmax": jax.nn.log_softmax,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "soft_sign": jax.nn.soft_sign,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}

GAMMAS: dict[str, float] = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "glu": 1.8484294414520264,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "log_softmax": 1.0002083778381348,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}

# 'swish' is the name the official NF-RegNet default asks for (and its table lacks).
_ALIASES = {"swish": "silu"}


def activation_names() -> list[str]:
  """Names accepted by `get_activation` (aliases included)."""
  return sorted(GAMMAS) + sorted(_ALIASES)


def estimate_gamma(fn: Callable[[Array], Array], *, num_samples: int = 1024,
                   dim: int = 1024, seed: int = 0) -> float:
  """γ = 1 / sqrt(E_x[Var g(x)]) for x ~ N(0, I_dim) ([NF-ResNets] sec. 4.2).

  The variance is taken across the `dim` features of each sample and averaged over
  `num_samples` samples, so functions acting on a whole vector (glu, log_softmax)
  are treated the way the published constants were computed.
  """
  x = jax.random.normal(jax.random.PRNGKey(seed), (num_samples, dim), jnp.float32)
  y = fn(x)
  return float(jax.lax.rsqrt(jnp.mean(jnp.var(y, axis=-1))))


def register_activation(name: str, fn: Callable[[Array], Array],
                        gamma: float | None = None) -> float:
  """Adds `fn` to the table under `name`; γ is estimated when not given. Returns γ."""
  if name in GAMMAS or name in _ALIASES:
    raise ValueError(f"Activation {name!r} already exists; pick another name.")
  if gamma is None:
    gamma = estimate_gamma(fn)
  _BASE_ACTIVATIONS[name] = fn
  GAMMAS[name] = float(gamma)
  return float(gamma)


def _scaled(fn: Callable[[Array], Array], gamma: float, x: Array) -> Array:
  return fn(x) * jnp.asarray(gamma, x.dtype)


def get_activation(name: str) -> Callable[[Array], Array]:
  """The γ-scaled nonlinearity γ·g(x), which keeps unit variance for N(0, 1) inputs."""
  name = _ALIASES.get(name, name)
  if name not in GAMMAS:
    raise ValueError(f"Unknown activation {name!r}; valid names: {activation_names()}.")
  if name == "identity":
    return _BASE_ACTIVATIONS["identity"]
  return functools.partial(_scaled, _BASE_ACTIVATIONS[name], GAMMAS[name])


# ---------------------------------------------------------------------------
# Scaled Weight Standardization ([NF-ResNets] eq. 3; [NFNets] sec. 3 learnable gain).
# ---------------------------------------------------------------------------


def _ws_statistics(w: Array, eps: float) -> tuple[Array, Array, Array]:
  """Fan-in mean, r = 1/sqrt(max(N·var, eps)) and whether the floor is inactive (float32)."""
  axes = tuple(range(w.ndim - 1))
  mean = jnp.mean(w, axis=axes, keepdims=True)
  n_var = jnp.var(w, axis=axes, keepdims=True) * int(np.prod(w.shape[:-1]))
  return mean, jax.lax.rsqrt(jnp.maximum(n_var, eps)), n_var > eps


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def standardize_weight(w: Array, gain: Array, eps: float = 1e-4) -> Array:
  """Ŵ = gain · (W − mean) / sqrt(max(N · var, eps)), statistics over the fan-in (H, W, I).

  Computed in float32 whatever the dtype of `w`; returns float32. The gradient is written by
  hand (the same values as autodiff; 3.3× faster for NFNet-F0's kernels on CPU) and keeps only
  per-channel statistics for the backward pass. Being a jax.custom_vjp, it supports reverse-mode
  differentiation (grad, vjp) but not forward mode (jvp, jacfwd).
  """
  return _standardize_fwd(w, gain, eps)[0]


def _standardize_fwd(w, gain, eps):
  w32 = w.astype(jnp.float32)
  mean, r, live = _ws_statistics(w32, eps)
  return (w32 - mean) * (r * gain.astype(jnp.float32)), (w, gain, mean, r, live)


def _standardize_bwd(eps, residuals, g):
  # With c = W − mean, Ŵ = gain·r·c and r = (Σc²)^(-1/2) above the floor:
  #   ∂gain = r·Σ g·c;   ∂W = gain·r·(g − mean(g)) − gain·r³·(Σ g·c)·c   (0 below the floor).
  del eps
  w, gain, mean, r, live = residuals
  axes = tuple(range(w.ndim - 1))
  c = w.astype(jnp.float32) - mean
  g_dot_c = jnp.sum(g * c, axis=axes, keepdims=True)
  gain_r = gain.astype(jnp.float32) * r
  dw = gain_r * (g - jnp.mean(g, axis=axes, keepdims=True)) - jnp.where(
      live, gain_r * r * r * g_dot_c, 0.0) * c
  dgain = (g_dot_c * r).reshape(gain.shape)
  return dw.astype(w.dtype), dgain.astype(gain.dtype)


standardize_weight.defvjp(_standardize_fwd, _standardize_bwd)


CONV_IMPLS = ("auto", "native", "split", "onednn")
# Above this many groups (narrow groups, e.g. NF-RegNet's width 8) one conv per group
# compiles slowly and runs no faster, so 'auto' keeps the native grouped conv.
MAX_SPLIT_GROUPS = 16


def resolve_conv_impl(impl: str, groups: int) -> str:
  """'auto' → 'onednn' on the CPU backend where oneDNN is available, else 'split' there (for up to
  MAX_SPLIT_GROUPS groups), else 'native'.

  'native' is one lax.conv_general_dilated with feature_group_count=groups. 'split' is the
  CPU-friendly formulation of the same function in XLA: grouped convs as one dense conv per
  group (XLA's CPU backend runs grouped convs 10–30× slower than dense ones) and 1×1
  convs as matrix products (no layout transposes in the backward pass). 'onednn' runs oneDNN's
  kernels (`nfnet_jax.onednn`; 1×1 convs as its matrix products).
  On GPU/TPU the native ops are the right choice.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")
  if impl == "onednn" and not onednn.available():
    raise ValueError(f"conv_impl='onednn': oneDNN is not available ({onednn.reason()}).")
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "native"
    if onednn.available():
      return "onednn"
    return "split" if groups <= MAX_SPLIT_GROUPS else "native"
  return impl


def bf16_products() -> bool:
  """Whether the trace runs under ``jax.default_matmul_precision('bfloat16')`` (`precision.scope`)."""
  return jax.config.jax_default_matmul_precision == "bfloat16"


def conv2d(x: Array, w: Array, *, stride: tuple[int, int] = (1, 1),
           padding: str | Sequence[tuple[int, int]] = "SAME",
           rate: tuple[int, int] = (1, 1), groups: int = 1, impl: str = "auto") -> Array:
  """NHWC × HWIO convolution with `groups` feature groups (see `resolve_conv_impl`).

  All implementations give the same result (to round-off) and the same gradients.
  """
  def dense(x, w, groups):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=stride, padding=padding, rhs_dilation=rate,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)

  impl = resolve_conv_impl(impl, groups)
  if impl == "onednn":
    if x.dtype == jnp.float32 and bf16_products():
      # float32 activations, bf16 convolution (`precision.scope`): round, convolve, widen.
      x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
      if onednn.supports(x16, w16, rate):
        return conv2d(x16, w16, stride=stride, padding=padding, groups=groups,
                      impl="onednn").astype(jnp.float32)
    if onednn.supports(x, w, rate):
      if w.shape[:2] == (1, 1) and isinstance(padding, str) and groups == 1:
        return _one_by_one(x, w, stride, onednn.matmul)
      return onednn.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    impl = "split" if groups <= MAX_SPLIT_GROUPS else "native"
  if impl == "native":
    return dense(x, w, groups)
  if groups > 1:
    xs = jnp.split(x, groups, axis=-1)
    ws = jnp.split(w, groups, axis=-1)
    return jnp.concatenate([conv2d(xg, wg, stride=stride, padding=padding, rate=rate,
                                   impl="split") for xg, wg in zip(xs, ws)], axis=-1)
  if w.shape[:2] == (1, 1) and isinstance(padding, str):
    return _one_by_one(x, w, stride, jnp.dot)
  return dense(x, w, 1)


def _one_by_one(x: Array, w: Array, stride: tuple[int, int], matmul: Callable) -> Array:
  """A 1×1 conv (it never pads, SAME or VALID): subsample, then one [N·H·W, C] matrix product.

  The 2-D form matters: from a 4-D dot_general, XLA:CPU transposes the output gradient to
  [C, N·H·W] for the weight gradient (3× slower backward at NF-ResNet-50's shapes).
  """
  x = x[:, ::stride[0], ::stride[1], :]
  out = matmul(x.reshape(-1, x.shape[-1]), w[0, 0])
  return out.reshape(x.shape[:-1] + out.shape[-1:])


def _pool_geometry(shape, window: int, stride: int):
  """SAME padding of a window²/stride pool: ((top, bottom), (left, right)) and the output size."""
  _, h, w, _ = shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h = max((out_h - 1) * stride + window - h, 0)
  pad_w = max((out_w - 1) * stride + window - w, 0)
  return ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)), (out_h, out_w)


def _pool_taps(x: Array, window: int, stride: int) -> list[Array]:
  """The window² strided slices of the padded input, row-major: tap (i, j) holds x[s·y + i, s·x + j]."""
  (ph, pw), (out_h, out_w) = _pool_geometry(x.shape, window, stride)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
  n, c = x.shape[0], x.shape[3]
  return [jax.lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                        (1, stride, stride, 1))
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: Array, window: int = 3, stride: int = 2) -> Array:
  """NHWC max pool with SAME padding: the elementwise max of window² strided slices.

  The same values and gradient as hk.max_pool (lax.reduce_window): each window's gradient goes to
  its first maximal input, row-major. The backward pass is one native call on CPU where it is
  built (`nfnet_jax.pool_grad`), else written by hand in XLA (the winning tap of each window, then
  one shifted sum per stride parity), where XLA:CPU expands reduce_window's gradient into iotas
  and a scatter and autodiff of the max chain recomputes it per tap.
  """
  return functools.reduce(jnp.maximum, _pool_taps(x, window, stride))


def _max_pool_fwd(x, window, stride):
  return max_pool(x, window, stride), x


def _max_pool_bwd(window, stride, x, dy):
  if pool_grad.supports(x):
    (ph, pw), _ = _pool_geometry(x.shape, window, stride)
    return (pool_grad.max_pool_grad(x, dy, window=window, stride=stride, pad_top=ph[0],
                                    pad_left=pw[0]),)
  return (max_pool_grad_xla(x, dy, window, stride),)


def max_pool_grad_xla(x: Array, dy: Array, window: int, stride: int) -> Array:
  """`max_pool`'s gradient in XLA ops (where `nfnet_jax.pool_grad` is not available)."""
  # Tap (i, j) of output (y, x) reads padded input (s·y + i, s·x + j). With i = s·a + p, the input
  # rows of parity p are the rows y + a of the taps (s·a + p, ·): each parity block of the padded
  # gradient is a sum of shifted tap gradients, and the blocks interleave by a reshape.
  n, h, w, c = x.shape
  (ph, pw), (out_h, out_w) = _pool_geometry(x.shape, window, stride)
  taps = _pool_taps(x, window, stride)
  # The first maximal tap, as a reduction: XLA:CPU computes it once, where a chain of selects
  # is fused into (and recomputed by) each of its uses below.
  winner = jnp.argmax(jnp.stack(taps), axis=0)
  m = -(-window // stride)  # taps per parity along one axis
  zero = jnp.zeros((), dy.dtype)
  rows = []
  for p in range(stride):
    blocks = []
    for q in range(stride):
      block = jnp.zeros((n, out_h + m - 1, out_w + m - 1, c), dy.dtype)
      for a in range(m):
        for b in range(m):
          i, j = stride * a + p, stride * b + q
          if i < window and j < window:
            g = jnp.where(winner == i * window + j, dy, zero)
            block = block + jnp.pad(g, ((0, 0), (a, m - 1 - a), (b, m - 1 - b), (0, 0)))
      blocks.append(block)
    rows.append(jnp.stack(blocks, axis=3))  # [n, A, B, q, c]
  dx = jnp.stack(rows, axis=2).reshape(n, stride * (out_h + m - 1), stride * (out_w + m - 1), c)
  return dx[:, ph[0]:ph[0] + h, pw[0]:pw[0] + w, :].astype(x.dtype)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(i) for i in v)
  if len(v) != 2:
    raise ValueError(f"{what} must be an int or a pair of ints, got {v}.")
  return v


class WSConv2D(hk.Module):
  """2-D convolution with Scaled Weight Standardization and affine gain + bias ([NF-ResNets] eq. 3).

  Parameters are named `w` [kh, kw, in/groups, out], `gain` [out] (init 1) and `bias` [out]
  (init 0), created in that order, as in DeepMind's released checkpoints. Inputs are NHWC.
  `conv_impl` ('auto' | 'native' | 'split' | 'onednn') picks how convs are computed (see
  `resolve_conv_impl`); it never changes the parameters.
  """

  def __init__(self, output_channels: int, kernel_shape: int | Sequence[int],
               stride: int | Sequence[int] = 1,
               padding: str | Sequence[tuple[int, int]] = "SAME",
               feature_group_count: int = 1, rate: int | Sequence[int] = 1,
               w_init: hk.initializers.Initializer | None = None,
               eps: float = 1e-4, conv_impl: str = "auto", name: str | None = None):
    super().__init__(name=name)
    resolve_conv_impl(conv_impl, feature_group_count)  # validate early
    if output_channels % feature_group_count:
      raise ValueError(f"output_channels={output_channels} is not divisible by "
                       f"feature_group_count={feature_group_count}.")
    self.output_channels = output_channels
    self.kernel_shape = _pair(kernel_shape, "kernel_shape")
    self.stride = _pair(stride, "stride")
    self.rate = _pair(rate, "rate")
    self.padding = padding
    self.feature_group_count = feature_group_count
    # Fan-in scaled normal init; WS makes the result largely insensitive to it.
    self.w_init = w_init or hk.initializers.VarianceScaling(1.0, "fan_in", "normal")
    self.eps = eps
    self.conv_impl = conv_impl

  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f"{self.module_name}: expected NHWC input, got shape {x.shape}.")
    in_ch = x.shape[-1]
    groups = self.feature_group_count
    if in_ch % groups:
      raise ValueError(f"{self.module_name}: {in_ch} input channels are not divisible "
                       f"by feature_group_count={groups}.")
    w_shape = self.kernel_shape + (in_ch // groups, self.output_channels)
    w = hk.get_parameter("w", w_shape, x.dtype, init=self.w_init)
    gain = hk.get_parameter("gain", (self.output_channels,), w.dtype, init=jnp.ones)
    weight = self.standardize(w, gain).astype(x.dtype)
    out = conv2d(x, weight, stride=self.stride, padding=self.padding, rate=self.rate,
                 groups=groups, impl=self.conv_impl)
    bias = hk.get_parameter("bias", (self.output_channels,), x.dtype, init=jnp.zeros)
    return out + bias.astype(out.dtype)

  def standardize(self, w: Array, gain: Array) -> Array:
    return standardize_weight(w, gain, self.eps)


def standardize_weight_timm(w: Array, gain: Array, gamma: float = 1.0, eps: float = 1e-5) -> Array:
  """Ŵ = γ · gain · (W − mean) / sqrt(N · (var + eps)): timm's ScaledStdConv2d, γ folded into the weight.

  The eps is added to the variance (DeepMind floors N·var at 1e-4 instead); statistics over the
  fan-in (H, W, I) in float32, differentiated by autodiff.
  """
  w32 = w.astype(jnp.float32)
  axes = tuple(range(w.ndim - 1))
  mean = jnp.mean(w32, axis=axes, keepdims=True)
  var = jnp.var(w32, axis=axes, keepdims=True)
  scale = gain.astype(jnp.float32) * (gamma * float(np.prod(w.shape[:-1])) ** -0.5)
  return (w32 - mean) * jax.lax.rsqrt(var + eps) * scale


class TimmWSConv2D(WSConv2D):
  """WSConv2D with timm's standardization (`standardize_weight_timm`): eps 1e-5 on the variance, ×γ.

  Same parameters (`w`, `gain`, `bias`) as WSConv2D; `gamma` is the γ of the activation before
  the conv, which timm multiplies into the weight instead of the activation.
  """

  def __init__(self, output_channels: int, kernel_shape: int | Sequence[int], *,
               gamma: float = 1.0, eps: float = 1e-5, **kwargs):
    super().__init__(output_channels, kernel_shape, eps=eps, **kwargs)
    self.gamma = gamma

  def standardize(self, w: Array, gain: Array) -> Array:
    return standardize_weight_timm(w, gain, self.gamma, self.eps)


# ---------------------------------------------------------------------------
# Squeeze-and-excite, stochastic depth, SkipInit gain, residual α/β scaling.
# ---------------------------------------------------------------------------


class SqueezeExcite(hk.Module):
  """x · 2σ(W₂ relu(W₁ mean_HW(x))): SE with the ×2 rescale of [NF-ResNets] sec. 4.2.

  Submodules `linear` (hidden units = max(1, int(in_ch · se_ratio)) or `hidden_ch`) and
  `linear_1`, as in the official layout. Returns the gated tensor, not the gate.
  """

  def __init__(self, in_ch: int, out_ch: int, se_ratio: float | None = 0.5,
               hidden_ch: int | None = None,
               activation: Callable[[Array], Array] = jax.nn.relu,
               name: str | None = None):
    super().__init__(name=name)
    if se_ratio is None:
      if hidden_ch is None:
        raise ValueError("SqueezeExcite needs one of se_ratio or hidden_ch.")
      self.hidden_ch = hidden_ch
    else:
      self.hidden_ch = max(1, int(in_ch * se_ratio))
    self.in_ch, self.out_ch = in_ch, out_ch
    self.activation = activation
    self.fc0 = hk.Linear(self.hidden_ch, with_bias=True)
    self.fc1 = hk.Linear(self.out_ch, with_bias=True)

  def __call__(self, x: Array) -> Array:
    h = jnp.mean(x, axis=(1, 2))
    h = self.fc1(self.activation(self.fc0(h)))
    gate = 2.0 * jax.nn.sigmoid(h)
    return x * gate[:, None, None, :].astype(x.dtype)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
  """k = the odd integer nearest above |log2(C) + β| / γ, at least 3 ([ECA-Net] eq. 12)."""
  t = int(abs(np.log2(channels) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(hk.Module):
  """x · 2σ(conv1d_k(mean_HW(x))): ECA (Wang et al. 2020, arXiv:1910.03151) with the ×2 NF rescale.

  One parameter `w` [k], a bias-free cross-correlation over channels with zero padding (k−1)/2,
  k = eca_kernel_size(channels) unless given.
  """

  def __init__(self, channels: int, kernel_size: int | None = None, name: str | None = None):
    super().__init__(name=name)
    self.kernel_size = kernel_size or eca_kernel_size(channels)
    if self.kernel_size % 2 == 0:
      raise ValueError(f"ECA kernel_size must be odd, got {self.kernel_size}.")

  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    w = hk.get_parameter("w", (k,), x.dtype,
                         init=hk.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"))  # ±1/sqrt(k)
    h = jnp.mean(x, axis=(1, 2))
    channels = h.shape[-1]
    padded = jnp.pad(h, ((0, 0), ((k - 1) // 2, (k - 1) // 2)))
    h = sum(w[j] * padded[:, j:j + channels] for j in range(k))
    gate = 2.0 * jax.nn.sigmoid(h)
    return x * gate[:, None, None, :].astype(x.dtype)


class StochasticDepth(hk.Module):
  """Drops the residual branch of whole examples with probability `drop_rate`, no rescaling.

  Only active with is_training=True, when it draws from hk.next_rng_key().
  """

  def __init__(self, drop_rate: float, name: str | None = None):
    super().__init__(name=name)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}.")
    self.drop_rate = drop_rate

  def __call__(self, x: Array, is_training: bool) -> Array:
    if not is_training or self.drop_rate == 0.0:
      return x
    u = jax.random.uniform(hk.next_rng_key(), (x.shape[0],) + (1,) * (x.ndim - 1),
                           dtype=jnp.float32)
    keep = jnp.floor(1.0 - self.drop_rate + u)  # 1 with probability 1 - drop_rate
    return x * keep.astype(x.dtype)


def skip_gain(x: Array, name: str = "skip_gain",
              init: hk.initializers.Initializer = jnp.zeros) -> Array:
  """SkipInit: x · g with a learnable scalar g, initialised to 0 by default (De & Smith 2020).

  Call inside a block's module scope so the parameter is `<block>/skip_gain`.
  """
  g = hk.get_parameter(name, (), x.dtype, init=init)
  return x * g


def residual_merge(branch: Array, shortcut: Array, *, alpha: float, is_training: bool,
                   stoch_depth: StochasticDepth | None = None,
                   skip_init: hk.initializers.Initializer = jnp.zeros) -> Array:
  """h_{i+1} = h_i + α · g · f_i(h_i / β_i) ([NF-ResNets] eq. 2, SkipInit gain g, stochastic depth).

  `branch` is f_i(h_i / β_i) and `shortcut` is h_i (or its projection at a transition). Call inside
  the block's module scope: the gain is `<block>/skip_gain`.
  """
  if stoch_depth is not None:
    branch = stoch_depth(branch, is_training)
  branch = skip_gain(branch, init=skip_init)
  return branch * jnp.asarray(alpha, branch.dtype) + shortcut


def stochdepth_rates(num_blocks: int, rate: float) -> list[float]:
  """Per-block stochastic depth rates growing linearly with block index: rate · i / num_blocks."""
  return [rate * i / num_blocks for i in range(num_blocks)]


def residual_betas(depths: Sequence[int], alpha: float) -> list[float]:
  """β_i = sqrt(Var(h_i)) for h_{i+1} = h_i + α f_i(h_i / β_i) ([NF-ResNets] sec. 4.1).

  The expected variance grows by α² per block and is reset at the transition block
  (the first of each stage, whose skip path is a projection of h_i / β_i) to 1 + α².
  """
  betas = []
  expected_var = 1.0
  for depth in depths:
    for block_index in range(depth):
      betas.append(1.0 / expected_var ** 0.5)
      if block_index == 0:
        expected_var = 1.0
      expected_var += alpha ** 2
  return betas


def expected_variances(depths: Sequence[int], alpha: float) -> list[float]:
  """Var(h_{i+1}) predicted at init after each block (the quantity β bookkeeping tracks)."""
  out = []
  for depth in depths:
    var = 1.0
    for _ in range(depth):
      var += alpha ** 2
      out.append(var)
  return out


def signal_stats(x: Array) -> dict[str, Array]:
  """Signal-propagation statistics of an NHWC tensor ([NF-ResNets] sec. 3), in float32.

  avg_sq_mean: mean over channels of the squared per-channel mean over (N, H, W);
  avg_var: mean over channels of the per-channel variance over (N, H, W).
  """
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  return {"avg_sq_mean": jnp.mean(jnp.square(jnp.mean(x, axis=axes))),
          "avg_var": jnp.mean(jnp.var(x, axis=axes))}
