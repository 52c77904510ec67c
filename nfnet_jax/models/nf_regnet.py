"""Normalizer-Free RegNets B0–B8 ([NF-ResNets] sec. 6, arXiv:2101.08692).

EfficientNet-like inverted bottlenecks (expansion 2.25, group width 8, SE) on RegNet widths.
Module and parameter names follow DeepMind's released layout ('NF_RegNet/~/nf_block_3/~/conv1').
DeepMind's default activation name 'swish' is missing from its own table; the default here
is 'silu', the same function (and 'swish' is accepted as an alias).
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

# variant: (widths per stage, depths per stage, train size, test size, dropout)
VARIANTS: dict[str, dict] = {
    key: dict(width=w, depth=d, train_imsize=tr, test_imsize=te, drop_rate=dr)
    for key, (w, d, tr, te, dr) in {
        "B0": ((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
        "B1": ((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
        "B2": ((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
        "B3": ((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
        "B4": ((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
        "B5": ((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
        "B6": ((88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5),
        "B7": ((96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5),
        "B8": ((104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5),
    }.items()
}

MIN_IMAGE_SIZE = 32  # total stride: stem 2 × four strided stages


class NFRegNetBlock(hk.Module):
  """Inverted bottleneck: h + α · g · conv2(act(SE(conv1(act(conv0(act(h) / β)))))).

  conv1 is a grouped 3×3 conv (group width `group_size`); SE acts on the expanded width.
  """

  def __init__(self, in_ch: int, out_ch: int, *, expansion: float = 2.25,
               se_ratio: float = 0.5, kernel_shape: int = 3, group_size: int = 8,
               stride: int = 1, beta: float = 1.0, alpha: float = 0.2,
               activation: Callable[[Array], Array] = layers.get_activation("silu"),
               stochdepth_rate: float | None = None, conv_impl: str = "auto",
               name: str = "nf_block"):
    super().__init__(name=name)
    self.in_ch, self.out_ch = in_ch, out_ch
    self.activation = activation
    self.beta, self.alpha = beta, alpha
    self.stride = stride
    width = int(in_ch * expansion)
    self.groups = width // group_size
    if self.groups < 1:
      raise ValueError(f"Expanded width {width} is smaller than group_size={group_size}; "
                       "increase the model width or decrease group_size.")
    self.width = group_size * self.groups
    conv = functools.partial(layers.WSConv2D, conv_impl=conv_impl)
    self.conv0 = conv(self.width, 1, name="conv0")
    self.conv1 = conv(self.width, kernel_shape, stride=stride,
                      feature_group_count=self.groups, name="conv1")
    self.conv2 = conv(out_ch, 1, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, name="conv_shortcut")
    self.se = layers.SqueezeExcite(self.width, self.width, se_ratio)
    self.stoch_depth = None
    if stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0:
      self.stoch_depth = layers.StochasticDepth(stochdepth_rate)

  def __call__(self, x: Array, is_training: bool,
               return_metrics: bool = False) -> tuple[Array, Array | None]:
    """Returns the block output and, with return_metrics, the residual branch's avg_var."""
    out = self.activation(x) * jnp.asarray(self.beta, x.dtype)
    if self.stride > 1:
      shortcut = hk.avg_pool(out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                             padding="SAME")
      if self.use_projection:
        shortcut = self.conv_shortcut(shortcut)
    elif self.use_projection:
      shortcut = self.conv_shortcut(out)
    else:
      shortcut = x
    out = self.conv0(out)
    out = self.se(self.conv1(self.activation(out)))
    out = self.conv2(self.activation(out))
    res_avg_var = layers.signal_stats(out)["avg_var"] if return_metrics else None
    out = layers.residual_merge(out, shortcut, alpha=self.alpha, is_training=is_training,
                                stoch_depth=self.stoch_depth)
    return out, res_avg_var


class NFRegNet(hk.Module):
  """NF-RegNet: strided 3×3 stem, four stages of inverted bottlenecks, 1×1 head conv."""

  def __init__(self, num_classes: int, variant: str = "B0", width: float = 0.75,
               expansion: float = 2.25, group_size: int = 8, se_ratio: float = 0.5,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: float | None = None, activation: str = "silu",
               fc_init: hk.initializers.Initializer | None = None,
               conv_impl: str = "auto", remat: bool = False, name: str = "NF_RegNet"):
    """Options as in DeepMind's NF_RegNet, plus conv_impl and remat as in NFNet."""
    super().__init__(name=name)
    self.remat = remat
    self.variant = variant.upper()
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown NF-RegNet variant {variant!r}; valid: {sorted(VARIANTS)}.")
    params = VARIANTS[self.variant]
    self.num_classes = num_classes
    self.train_imsize = params["train_imsize"]
    self.test_imsize = params["test_imsize"]
    self.drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
    self.activation = layers.get_activation(activation)
    conv = functools.partial(layers.WSConv2D, conv_impl=conv_impl)
    ch = int(params["width"][0] * width)
    self.initial_conv = conv(ch, 3, stride=2, name="initial_conv")

    depths = params["depth"]
    betas = layers.residual_betas(depths, alpha)
    sd_rates = layers.stochdepth_rates(sum(depths), stochdepth_rate)
    self.blocks, self.transitions = [], []
    for stage_width, depth in zip(params["width"], depths):
      for i in range(depth):
        index = len(self.blocks)
        out_ch = int(stage_width * width)
        self.blocks.append(NFRegNetBlock(
            ch, out_ch, expansion=1 if index == 0 else expansion, se_ratio=se_ratio,
            group_size=group_size, stride=2 if i == 0 else 1, beta=betas[index],
            alpha=alpha, activation=self.activation, stochdepth_rate=sd_rates[index],
            conv_impl=conv_impl))
        self.transitions.append(i == 0)
        ch = out_ch
    # EfficientNet-style head: 1280 channels for a 440-wide last stage.
    self.final_conv = conv(int(1280 * ch // 440), 1, name="final_conv")
    self.fc = hk.Linear(num_classes, w_init=fc_init or jnp.zeros, with_bias=True)

  def __call__(self, x: Array, is_training: bool = True,
               return_metrics: bool = False) -> dict[str, Array]:
    """Returns {'logits' (float32), 'pool'} and, with return_metrics, 'signal'."""
    base.check_images(x, MIN_IMAGE_SIZE, f"NF-RegNet-{self.variant}")
    out = self.initial_conv(x)
    out, records = base.run_blocks(self.blocks, out, is_training=is_training,
                                   return_metrics=return_metrics, remat=self.remat)
    out = self.activation(self.final_conv(out))
    outputs = base.pooled_head(self.fc, out, drop_rate=self.drop_rate, is_training=is_training)
    if return_metrics:
      outputs["signal"] = base.stack_signal(records, self.transitions)
    return outputs


SPECS: list[base.ModelSpec] = [
    base.ModelSpec(
        name=f"nf_regnet_{key.lower()}", family="nf_regnet",
        train_image_size=p["train_imsize"], test_image_size=p["test_imsize"],
        drop_rate=p["drop_rate"], min_image_size=MIN_IMAGE_SIZE,
        official_layout=f"nf_regnet_{key}", default_kwargs={"variant": key},
        constructor=NFRegNet)
    for key, p in VARIANTS.items()
]
