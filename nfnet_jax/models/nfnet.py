"""NFNets F0–F7 and the wider F0+–F7+ (Brock, De, Smith & Simonyan 2021, arXiv:2102.06171).

Module and parameter names follow DeepMind's released checkpoints exactly
(e.g. 'NFNet/~/nf_block_3/~/conv1b/w').
"""

from __future__ import annotations

from collections.abc import Callable
import functools

import haiku as hk
import jax
import jax.numpy as jnp

from nfnet_jax import layers
from nfnet_jax.models import base

Array = jax.Array

_F_SERIES = {
    # variant: (depth per stage, train size, test size, RandAugment level, dropout)
    "F0": ((1, 2, 6, 3), 192, 256, "405", 0.2),
    "F1": ((2, 4, 12, 6), 224, 320, "410", 0.3),
    "F2": ((3, 6, 18, 9), 256, 352, "410", 0.4),
    "F3": ((4, 8, 24, 12), 320, 416, "415", 0.4),
    "F4": ((5, 10, 30, 15), 384, 512, "415", 0.5),
    "F5": ((6, 12, 36, 18), 416, 544, "415", 0.5),
    "F6": ((7, 14, 42, 21), 448, 576, "415", 0.5),
    "F7": ((8, 16, 48, 24), 480, 608, "415", 0.5),
}

# Per variant: width/depth per stage, image sizes, RandAugment level and dropout rate.
# The '+' variants are the same networks with wider stages.
VARIANTS: dict[str, dict] = {}
for _key, (_depth, _train, _test, _ra, _drop) in _F_SERIES.items():
  for _suffix, _width in (("", (256, 512, 1536, 1536)), ("+", (384, 768, 2048, 2048))):
    VARIANTS[_key + _suffix] = dict(
        width=_width, depth=_depth, train_imsize=_train, test_imsize=_test,
        RA_level=_ra, drop_rate=_drop)

MIN_IMAGE_SIZE = 32  # total stride: stem 4 × three strided stages


def canonical_variant(variant: str) -> str:
  """'F0plus' / 'f0+' / 'F0+' → 'F0+'; raises ValueError for unknown variants."""
  key = variant.upper().replace("PLUS", "+")
  if key not in VARIANTS:
    raise ValueError(f"Unknown NFNet variant {variant!r}; valid: {sorted(VARIANTS)}.")
  return key


class NFBlock(hk.Module):
  """NFNet bottleneck block: h + α · g · SE(f(h / β)) ([NFNets] fig. 4, [NF-ResNets] eq. 2).

  f = conv2 ∘ act ∘ conv1b ∘ act ∘ conv1 ∘ act ∘ conv0 on act(h)/β, with grouped 3×3
  convs (group width `group_size`), SE with ×2 rescale, stochastic depth and SkipInit g.
  """

  def __init__(self, in_ch: int, out_ch: int, *, expansion: float = 0.5,
               se_ratio: float = 0.5, kernel_shape: int = 3, group_size: int = 128,
               stride: int = 1, beta: float = 1.0, alpha: float = 0.2,
               activation: Callable[[Array], Array] = layers.get_activation("gelu"),
               big_width: bool = True, use_two_convs: bool = True,
               stochdepth_rate: float | None = None, conv_impl: str = "auto",
               name: str | None = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch = in_ch, out_ch
    self.activation = activation
    self.beta, self.alpha = beta, alpha
    self.stride = stride
    self.use_two_convs = use_two_convs
    # Bottleneck width, rounded down to a whole number of groups.
    width = int((out_ch if big_width else in_ch) * expansion)
    self.groups = width // group_size
    if self.groups < 1:
      raise ValueError(f"Bottleneck width {width} is smaller than group_size={group_size}; "
                       "increase the model width or decrease group_size.")
    self.width = group_size * self.groups
    conv = functools.partial(layers.WSConv2D, conv_impl=conv_impl)
    self.conv0 = conv(self.width, 1, name="conv0")
    self.conv1 = conv(self.width, kernel_shape, stride=stride,
                      feature_group_count=self.groups, name="conv1")
    if use_two_convs:
      self.conv1b = conv(self.width, kernel_shape, feature_group_count=self.groups,
                         name="conv1b")
    self.conv2 = conv(out_ch, 1, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, name="conv_shortcut")
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)
    self.stoch_depth = None
    if stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0:
      self.stoch_depth = layers.StochasticDepth(stochdepth_rate)

  def __call__(self, x: Array, is_training: bool,
               return_metrics: bool = False) -> tuple[Array, Array | None]:
    """Returns the block output and, with return_metrics, the residual branch's avg_var."""
    out = self.activation(x) * jnp.asarray(self.beta, x.dtype)
    if self.stride > 1:  # average-pool the shortcut down, then project
      shortcut = hk.avg_pool(out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                             padding="SAME")
      if self.use_projection:
        shortcut = self.conv_shortcut(shortcut)
    elif self.use_projection:
      shortcut = self.conv_shortcut(out)
    else:
      shortcut = x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    if self.use_two_convs:
      out = self.conv1b(self.activation(out))
    out = self.conv2(self.activation(out))
    out = self.se(out)
    res_avg_var = layers.signal_stats(out)["avg_var"] if return_metrics else None
    out = layers.residual_merge(out, shortcut, alpha=self.alpha, is_training=is_training,
                                stoch_depth=self.stoch_depth)
    return out, res_avg_var


class NFNet(hk.Module):
  """Normalizer-Free Network ([NFNets] sec. 4 and table 7): stem, four stages, head."""

  def __init__(self, num_classes: int, variant: str = "F0", width: float = 1.0,
               se_ratio: float = 0.5, alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: float | None = None, activation: str = "gelu",
               fc_init: hk.initializers.Initializer | None = None,
               final_conv_mult: float | None = 2, final_conv_ch: int | None = None,
               use_two_convs: bool = True, group_size: int = 128,
               stem_width: int | None = None, depths: tuple[int, ...] | None = None,
               widths: tuple[int, ...] | None = None,
               conv_impl: str = "auto", remat: bool = False, name: str = "NFNet"):
    """Options as in DeepMind's NFNet, plus group_size, stem_width (see below), depths and
    widths (default: the variant's), for smaller test networks, and (neither changes the parameters):

    conv_impl: 'auto' | 'native' | 'split' | 'onednn', how convs are computed
      (see layers.resolve_conv_impl; on CPU 'auto' runs oneDNN where available).
    remat: recompute each residual block in the backward pass instead of storing its
      activations, trading compute for memory (see base.late_checkpoint).
    """
    super().__init__(name=name)
    self.remat = remat
    self.variant = canonical_variant(variant)
    params = VARIANTS[self.variant]
    self.num_classes = num_classes
    self.train_imsize = params["train_imsize"]
    self.test_imsize = params["test_imsize"]
    self.drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
    self.activation = layers.get_activation(activation)
    conv = functools.partial(layers.WSConv2D, conv_impl=conv_impl)
    ch = params["width"][0] // 2 if stem_width is None else stem_width
    # DeepMind's stem: 16, 32, 64, ch channels; a given stem_width s: s/8, s/4, s/2, s (timm's).
    stem_chs = (16, 32, 64) if stem_width is None else (ch // 8, ch // 4, ch // 2)
    self.stem = [conv(c, 3, stride=s, name=f"stem_conv{i}")
                 for i, (c, s) in enumerate(zip(stem_chs + (ch,), (2, 1, 1, 2)))]

    depths = params["depth"] if depths is None else tuple(depths)
    widths = params["width"] if widths is None else tuple(widths)
    if len(depths) != 4 or len(widths) != 4:
      raise ValueError(f"NFNet needs 4 stage depths and widths, got {depths} and {widths}.")
    betas = layers.residual_betas(depths, alpha)
    sd_rates = layers.stochdepth_rates(sum(depths), stochdepth_rate)
    self.blocks, self.transitions = [], []
    for stage, (stage_width, depth, stride) in enumerate(
        zip(widths, depths, (1, 2, 2, 2))):
      for i in range(depth):
        index = len(self.blocks)
        out_ch = int(stage_width * width)
        self.blocks.append(NFBlock(
            ch, out_ch, se_ratio=se_ratio, stride=stride if i == 0 else 1,
            beta=betas[index], alpha=alpha, activation=self.activation,
            use_two_convs=use_two_convs, group_size=group_size, stochdepth_rate=sd_rates[index],
            conv_impl=conv_impl))
        self.transitions.append(i == 0)
        ch = out_ch

    if final_conv_mult is None:
      if final_conv_ch is None:
        raise ValueError("NFNet needs one of final_conv_mult or final_conv_ch.")
      ch = final_conv_ch
    else:
      ch = int(final_conv_mult * ch)
    self.final_conv = conv(ch, 1, name="final_conv")
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def __call__(self, x: Array, is_training: bool = True,
               return_metrics: bool = False) -> dict[str, Array]:
    """Returns {'logits' (float32), 'pool'} and, with return_metrics, 'signal'."""
    base.check_images(x, MIN_IMAGE_SIZE, f"NFNet-{self.variant}")
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


def _spec(variant: str) -> base.ModelSpec:
  params = VARIANTS[variant]
  suffix = variant.replace("+", "plus")
  return base.ModelSpec(
      name=f"nfnet_{suffix.lower()}", family="nfnet",
      train_image_size=params["train_imsize"], test_image_size=params["test_imsize"],
      drop_rate=params["drop_rate"], min_image_size=MIN_IMAGE_SIZE,
      official_layout=f"nfnet_{suffix}", default_kwargs={"variant": variant},
      constructor=NFNet)


SPECS: list[base.ModelSpec] = [_spec(v) for v in VARIANTS]
