"""Normalizer-Free pre-activation ResNets (Brock, De & Smith 2021, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets", arXiv:2101.08692).

Each block computes h_{i+1} = h_i + α · g · f_i(h_i / β_i) (sec. 4.1), with Scaled Weight
Standardized convs (eq. 3), γ-scaled activations (sec. 4.2) and a SkipInit gain g.
Module paths equal DeepMind's `nfnets/nf_resnet.py`, e.g. 'NF_ResNet/~/nf_res_block_7/~/conv1'.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax.numpy as jnp

from nfnet_jax import layers
from nfnet_jax.models import base
from nfnet_jax.models.resnet import STAGE_CHANNELS, STAGE_STRIDES, check_depth, depth_specs


def _plain_conv(output_channels, kernel_shape, stride=1, padding='SAME', name=None):
  """Unstandardized conv with bias and the same fan-in normal init as WSConv2D's `w`."""
  return hk.Conv2D(output_channels, kernel_shape, stride=stride, padding=padding,
                   with_bias=True,
                   w_init=hk.initializers.VarianceScaling(1.0, 'fan_in', 'normal'),
                   name=name)


class NFResBlock(hk.Module):
  """Bottleneck block h + α · g · f(act(h) · β); projection shortcut on downsample/width change."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1, beta: float = 1.0,
               alpha: float = 0.2, activation=None, which_conv=layers.WSConv2D,
               stochdepth_rate: float = 0.0, skipinit_gain: float = 0.0,
               use_se: bool = False, se_ratio: float = 0.25, bottleneck_ratio: float = 0.25,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
    self.beta, self.alpha = beta, alpha
    self.activation = activation or layers.get_activation('relu')
    # A float is the initial value of g; an hk initializer (e.g. jnp.zeros) is used as is.
    self.skip_init = (skipinit_gain if callable(skipinit_gain)
                      else hk.initializers.Constant(float(skipinit_gain)))
    width = int(out_ch * bottleneck_ratio)
    self.conv0 = which_conv(width, 1, name='conv0')
    self.conv1 = which_conv(width, 3, stride=stride, name='conv1')
    self.conv2 = which_conv(out_ch, 1, name='conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = which_conv(out_ch, 1, stride=stride, name='conv_shortcut')
    self.stoch_depth = (layers.StochasticDepth(stochdepth_rate)
                        if 0.0 < stochdepth_rate < 1.0 else None)
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio) if use_se else None

  def __call__(self, x, is_training: bool, return_metrics: bool = False):
    out = self.activation(x) * jnp.asarray(self.beta, x.dtype)
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    if self.se is not None:
      out = self.se(out)
    res_avg_var = layers.signal_stats(out)['avg_var'] if return_metrics else None
    out = layers.residual_merge(out, shortcut, alpha=self.alpha, is_training=is_training,
                                stoch_depth=self.stoch_depth, skip_init=self.skip_init)
    return out, res_avg_var


class NF_ResNet(hk.Module):  # pylint: disable=invalid-name  (official module name)
  """NF-ResNet-{50...600}: BN-free pre-activation ResNet with Scaled WS (or plain convs).

  Args:
    num_classes: classifier outputs.
    depth: 50, 101, 152, 200, 288 or 600, or 4 blocks-per-stage counts.
    width: channel multiplier; stage outputs are (64, 128, 256, 512) · width.
    alpha: α, the residual branch scale (sec. 4.1).
    stochdepth_rate: final block's stochastic depth rate; block i uses rate · i / num_blocks.
    drop_rate: dropout before the classifier (training only).
    activation: name of a γ-scaled activation in `layers.get_activation`.
    skipinit_gain: initial SkipInit gain g (0 as released; 1 to see the α²-growth of the
      variance in signal propagation plots), or an hk initializer.
    use_se: squeeze-and-excite (×2 rescaled) on each residual branch, hidden = se_ratio · out.
    use_ws: Scaled Weight Standardization; False gives plain convs with bias (the paper's
      "without Scaled WS" comparison).
    fc_init: classifier weight init, N(0, 0.01) by default.
    remat: recompute each residual block in the backward pass (see base.late_checkpoint).
  """

  def __init__(self, num_classes: int = 1000, depth: int | tuple[int, ...] = 50,
               width: int = 4,
               alpha: float = 0.2, stochdepth_rate: float = 0.1, drop_rate: float = 0.0,
               activation: str = 'relu', skipinit_gain: float = 0.0,
               use_se: bool = False, se_ratio: float = 0.25, use_ws: bool = True,
               fc_init=None, remat: bool = False, name: str = 'NF_ResNet'):
    super().__init__(name=name)
    self.remat = remat
    depth_pattern = check_depth(depth)
    base.check_resnet_options(width, drop_rate, stochdepth_rate)
    self.num_classes = num_classes
    self.activation = layers.get_activation(activation)
    self.drop_rate = drop_rate
    which_conv = layers.WSConv2D if use_ws else _plain_conv
    ch = 16 * width
    self.initial_conv = which_conv(ch, 7, stride=2, name='initial_conv')
    betas = layers.residual_betas(depth_pattern, alpha)
    rates = layers.stochdepth_rates(sum(depth_pattern), stochdepth_rate)
    self.blocks, self.transitions = [], []
    for mult, stage_depth, stride in zip(STAGE_CHANNELS, depth_pattern, STAGE_STRIDES):
      for i in range(stage_depth):
        index = len(self.blocks)
        self.blocks.append(NFResBlock(
            ch, mult * width, stride=stride if i == 0 else 1, beta=betas[index],
            alpha=alpha, activation=self.activation, which_conv=which_conv,
            stochdepth_rate=rates[index], skipinit_gain=skipinit_gain,
            use_se=use_se, se_ratio=se_ratio))
        self.transitions.append(i == 0)
        ch = mult * width
    self.fc = hk.Linear(num_classes, w_init=fc_init or hk.initializers.RandomNormal(0.01),
                        with_bias=True, name='linear')

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = self.initial_conv(x)
    out = layers.max_pool(out, window=3, stride=2)
    out, records = base.run_blocks(self.blocks, out, is_training=is_training,
                                   return_metrics=return_metrics, remat=self.remat)
    outputs = base.pooled_head(self.fc, self.activation(out), drop_rate=self.drop_rate,
                               is_training=is_training)
    if return_metrics:
      outputs['signal'] = base.stack_signal(records, self.transitions)
    return outputs


SPECS: list[base.ModelSpec] = depth_specs('nf_resnet', NF_ResNet, lambda d: f'nf_resnet_ResNet{d}')
