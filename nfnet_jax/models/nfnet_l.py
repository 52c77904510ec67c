"""timm's 'light' NFNets: NFNet-L0 and ECA-NFNet-L0–L3 (Wightman, pytorch-image-models, 2021).

NFNet-F networks ([NFNets] sec. 4) with SiLU, a 0.25 bottleneck, group width 64, a 1.5× / 2× final
conv and squeeze-excite (L0) or efficient channel attention (ECA-L*). The maths is timm's: symmetric
padding (k − 1) / 2, weight standardization with eps 1e-5 on the variance and the activation's γ
folded into every conv's weight (the stem's first conv and the final conv included), plain SiLU,
channels rounded to multiples of 8, no SkipInit gain. Parameter names follow models/nfnet.py.
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp

from nfnet_jax import layers
from nfnet_jax.models import base

Array = jax.Array

MIN_IMAGE_SIZE = 32  # total stride: stem 4 × three strided stages

_DEPTHS = {"0": (1, 2, 6, 3), "1": (2, 4, 12, 6), "2": (3, 6, 18, 9), "3": (4, 8, 24, 12)}
# name: (depth key, attention, final conv multiplier, train size, test size, dropout).
# Sizes are timm's pretrained configs; timm records no dropout, so it is that of the F-net of
# the same depth ([NFNets] table 7).
VARIANTS = {
    "nfnet_l0": ("0", "se", 1.5, 224, 288, 0.2),
    "eca_nfnet_l0": ("0", "eca", 1.5, 224, 288, 0.2),
    "eca_nfnet_l1": ("1", "eca", 2.0, 256, 320, 0.3),
    "eca_nfnet_l2": ("2", "eca", 2.0, 320, 384, 0.4),
    "eca_nfnet_l3": ("3", "eca", 2.0, 352, 448, 0.4),
}


# timm's activations (its GELU is the exact, erf one).
_ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu,
                "gelu": functools.partial(jax.nn.gelu, approximate=False)}


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """v rounded to the nearest multiple of `divisor`, at least `divisor`, going down by under 10%."""
  rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * v else rounded


def _padding(kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  p = ((stride - 1) + (kernel - 1)) // 2
  return ((p, p), (p, p))


class NFBlockL(hk.Module):
  """h + α · A(f(act(h) · β)), A = 2σ-gated SE or ECA on the block output ([NFNets] fig. 4)."""

  def __init__(self, in_ch: int, out_ch: int, *, stride: int, beta: float, alpha: float,
               bottle_ratio: float, group_size: int, attention: str, se_ratio: float,
               activation, conv, stochdepth_rate: float | None, name: str | None = None):
    super().__init__(name=name)
    self.activation, self.beta, self.alpha, self.stride = activation, beta, alpha, stride
    width = make_divisible(out_ch * bottle_ratio)
    groups = width // group_size
    if groups < 1:
      raise ValueError(f"Bottleneck width {width} is smaller than group_size={group_size}; "
                       "increase the model width or decrease group_size.")
    if group_size % 8 == 0:
      width = group_size * groups
    self.conv0 = conv(width, 1, name="conv0")
    self.conv1 = conv(width, 3, stride=stride, feature_group_count=groups, name="conv1")
    self.conv1b = conv(width, 3, feature_group_count=groups, name="conv1b")
    self.conv2 = conv(out_ch, 1, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, name="conv_shortcut")
    if attention == "se":
      self.attention = layers.SqueezeExcite(
          out_ch, out_ch, se_ratio=None, hidden_ch=make_divisible(out_ch * se_ratio, round_limit=0.0))
    else:
      self.attention = layers.EfficientChannelAttention(out_ch, name="eca")
    self.stoch_depth = None
    if stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0:
      self.stoch_depth = layers.StochasticDepth(stochdepth_rate)

  def __call__(self, x: Array, is_training: bool,
               return_metrics: bool = False) -> tuple[Array, Array | None]:
    out = self.activation(x) * jnp.asarray(self.beta, x.dtype)
    shortcut = x
    if self.use_projection:
      pooled = out
      if self.stride > 1:  # timm's AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        pooled = hk.avg_pool(out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="SAME")
      shortcut = self.conv_shortcut(pooled)
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv1b(self.activation(out))
    out = self.conv2(self.activation(out))
    out = self.attention(out)
    res_avg_var = layers.signal_stats(out)["avg_var"] if return_metrics else None
    if self.stoch_depth is not None:
      out = self.stoch_depth(out, is_training)
    return out * jnp.asarray(self.alpha, out.dtype) + shortcut, res_avg_var


class NFNetL(hk.Module):
  """timm's NormFreeNet with the NFNet-L configs: deep stem, four stages, final conv, head."""

  def __init__(self, num_classes: int, depths=(1, 2, 6, 3), channels=(256, 512, 1536, 1536),
               stem_ch: int = 128, width: float = 1.0, group_size: int = 64,
               bottle_ratio: float = 0.25, final_conv_mult: float = 1.5,
               attention: str = "eca", se_ratio: float = 0.25, alpha: float = 0.2,
               activation: str = "silu", stochdepth_rate: float = 0.1, drop_rate: float = 0.2,
               conv_impl: str = "auto", remat: bool = False, name: str = "NFNetL"):
    """`width` scales every channel count (then rounded to a multiple of 8), as timm's width_factor.

    conv_impl and remat as in NFNet; neither changes the parameters.
    """
    super().__init__(name=name)
    if attention not in ("se", "eca"):
      raise ValueError(f"attention must be 'se' or 'eca', got {attention!r}.")
    if len(depths) != 4 or len(channels) != 4:
      raise ValueError(f"NFNetL needs 4 stage depths and channels, got {depths} and {channels}.")
    self.remat, self.drop_rate = remat, drop_rate
    if activation not in _ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
    # timm folds γ into the convs: the activations themselves are unscaled.
    self.activation = _ACTIVATIONS[activation]
    conv = functools.partial(_conv, gamma=layers.GAMMAS[activation], conv_impl=conv_impl)
    stem = make_divisible(stem_ch * width)
    self.stem = [conv(c, 3, stride=s, name=f"stem_conv{i}")
                 for i, (c, s) in enumerate(zip((stem // 8, stem // 4, stem // 2, stem), (2, 1, 1, 2)))]
    betas = layers.residual_betas(depths, alpha)
    sd_rates = layers.stochdepth_rates(sum(depths), stochdepth_rate)
    self.blocks, self.transitions = [], []
    ch = stem
    for stage_ch, depth, stride in zip(channels, depths, (1, 2, 2, 2)):
      out_ch = make_divisible(stage_ch * width)
      for i in range(depth):
        index = len(self.blocks)
        self.blocks.append(NFBlockL(
            ch, out_ch, stride=stride if i == 0 else 1, beta=betas[index], alpha=alpha,
            bottle_ratio=bottle_ratio, group_size=group_size, attention=attention,
            se_ratio=se_ratio, activation=self.activation, conv=conv,
            stochdepth_rate=sd_rates[index], name="nf_block"))
        self.transitions.append(i == 0)
        ch = out_ch
    self.final_conv = conv(make_divisible(width * int(channels[-1] * final_conv_mult)), 1,
                           name="final_conv")
    self.fc = hk.Linear(num_classes, w_init=hk.initializers.RandomNormal(stddev=0.01))

  def __call__(self, x: Array, is_training: bool = True,
               return_metrics: bool = False) -> dict[str, Array]:
    """Returns {'logits' (float32), 'pool'} and, with return_metrics, 'signal'."""
    base.check_images(x, MIN_IMAGE_SIZE, "NFNet-L")
    out = x
    for i, conv in enumerate(self.stem):
      out = conv(out if i == 0 else self.activation(out))
    out, records = base.run_blocks(self.blocks, out, is_training=is_training,
                                   return_metrics=return_metrics, remat=self.remat)
    out = self.activation(self.final_conv(out))
    outputs = base.pooled_head(self.fc, out, drop_rate=self.drop_rate, is_training=is_training)
    if return_metrics:
      outputs["signal"] = base.stack_signal(records, self.transitions)
    return outputs


def _conv(channels: int, kernel: int, *, stride: int = 1, **kwargs) -> layers.TimmWSConv2D:
  return layers.TimmWSConv2D(channels, kernel, stride=stride, padding=_padding(kernel, stride),
                             **kwargs)


def _spec(name: str) -> base.ModelSpec:
  depth, attention, mult, train, test, drop = VARIANTS[name]
  return base.ModelSpec(
      name=name, family="nfnet_l", train_image_size=train, test_image_size=test, drop_rate=drop,
      min_image_size=MIN_IMAGE_SIZE, official_layout=None,
      default_kwargs={"depths": _DEPTHS[depth], "attention": attention, "final_conv_mult": mult,
                      "drop_rate": drop},
      constructor=NFNetL)


SPECS: list[base.ModelSpec] = [_spec(n) for n in VARIANTS]
