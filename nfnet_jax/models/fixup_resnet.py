"""Fixup ResNets (Zhang, Dauphin & Ma 2019, "Fixup initialization: residual learning without
normalization", arXiv:1901.09321): unnormalized post-activation ResNets.

Fixup's rules (sec. 3): the last conv of every residual branch starts at zero; the branch's other
layers get He init scaled by L^{-1/(2m-2)} = L^{-1/4} (L branches of m = 3 layers); scalar biases
precede every conv, activation and the classifier, and each branch has one scalar multiplier. The NF-ResNet paper's (arXiv:2101.08692) second baseline. Module paths equal DeepMind's
`nfnets/fixup_resnet.py`, e.g. 'FixUp_ResNet/~/res_block_7/bias2a'.
"""
from __future__ import annotations

import haiku as hk
import jax.numpy as jnp

from nfnet_jax import layers
from nfnet_jax.models import base
from nfnet_jax.models.resnet import (STAGE_CHANNELS, STAGE_STRIDES, _activation, check_depth,
                                     depth_specs)


def _bias(name: str, dtype) -> jnp.ndarray:
  return hk.get_parameter(name, (), dtype, init=jnp.zeros)


def _he_fan_out(scale: float = 1.0) -> hk.initializers.Initializer:
  """N(0, scale · 2 / fan_out), fan_out = kernel area · output channels (Fixup's He init)."""
  return hk.initializers.VarianceScaling(2.0 * scale, 'fan_out', 'normal')


class FixupBlock(hk.Module):
  """Post-activation bottleneck relu(shortcut(h + b1a) + scale · f(h + b1a) + b3b) (Fixup sec. 3)."""

  def __init__(self, in_ch: int, out_ch: int, num_blocks: int, stride: int = 1, activation=None,
               stochdepth_rate: float = 0.0, bottleneck_ratio: float = 0.25,
               name: str = 'res_block'):
    super().__init__(name=name)
    self.activation = activation or _activation('relu')
    width = int(out_ch * bottleneck_ratio)
    branch_init = _he_fan_out(num_blocks ** -0.5)  # std multiplied by L^{-1/4}
    self.conv0 = hk.Conv2D(width, 1, with_bias=False, w_init=branch_init, name='conv0')
    self.conv1 = hk.Conv2D(width, 3, stride=stride, with_bias=False, w_init=branch_init,
                           name='conv1')
    self.conv2 = hk.Conv2D(out_ch, 1, with_bias=False, w_init=jnp.zeros, name='conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = hk.Conv2D(out_ch, 1, stride=stride, with_bias=False,
                                     w_init=_he_fan_out(), name='conv_shortcut')
    self.stoch_depth = (layers.StochasticDepth(stochdepth_rate)
                        if 0.0 < stochdepth_rate < 1.0 else None)

  def __call__(self, x, is_training: bool, return_metrics: bool = False):
    b1a, b1b, b2a, b2b, b3a, b3b = (_bias(n, x.dtype) for n in
                                    ('bias1a', 'bias1b', 'bias2a', 'bias2b', 'bias3a', 'bias3b'))
    scale = hk.get_parameter('scale', (), x.dtype, init=jnp.ones)
    out = x + b1a
    shortcut = self.conv_shortcut(out) if self.use_projection else out
    out = self.activation(self.conv0(out) + b1b)
    out = self.activation(self.conv1(out + b2a) + b2b)
    out = self.conv2(out + b3a) * scale + b3b
    res_avg_var = layers.signal_stats(out)['avg_var'] if return_metrics else None
    if self.stoch_depth is not None:
      out = self.stoch_depth(out, is_training)
    return self.activation(out + shortcut), res_avg_var


class FixUp_ResNet(hk.Module):  # pylint: disable=invalid-name  (official module name)
  """Fixup-ResNet-{50...600}: post-activation bottlenecks with Fixup's init, biases and scales.

  Args:
    num_classes: classifier outputs.
    depth: 50, 101, 152, 200, 288 or 600, or 4 blocks-per-stage counts.
    width: channel multiplier; stage outputs are (64, 128, 256, 512) · width.
    stochdepth_rate: final block's stochastic depth rate; block i uses rate · i / num_blocks.
    drop_rate: dropout before the classifier (training only). DeepMind's default (None) reads a
      missing variant entry and raises KeyError; 0 here.
    activation: name of a jax.nn activation (not γ-scaled).
    fc_init: classifier weight init, zeros by default (Fixup's rule and DeepMind's code).
    remat: recompute each residual block in the backward pass (see base.late_checkpoint).
  """

  def __init__(self, num_classes: int = 1000, depth: int | tuple[int, ...] = 50, width: int = 4,
               stochdepth_rate: float = 0.1, drop_rate: float = 0.0, activation: str = 'relu',
               fc_init=None, remat: bool = False, name: str = 'FixUp_ResNet'):
    super().__init__(name=name)
    depth_pattern = check_depth(depth)
    base.check_resnet_options(width, drop_rate, stochdepth_rate)
    self.activation = _activation(activation)
    self.drop_rate, self.remat = drop_rate, remat
    ch = 16 * width
    self.initial_conv = hk.Conv2D(ch, 7, stride=2, with_bias=False, name='initial_conv')
    num_blocks = sum(depth_pattern)
    rates = layers.stochdepth_rates(num_blocks, stochdepth_rate)
    self.blocks, self.transitions = [], []
    for mult, stage_depth, stride in zip(STAGE_CHANNELS, depth_pattern, STAGE_STRIDES):
      for i in range(stage_depth):
        self.blocks.append(FixupBlock(
            ch, mult * width, num_blocks, stride=stride if i == 0 else 1,
            activation=self.activation, stochdepth_rate=rates[len(self.blocks)]))
        self.transitions.append(i == 0)
        ch = mult * width
    self.fc = hk.Linear(num_classes, w_init=fc_init or jnp.zeros, name='linear')

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = self.initial_conv(x)
    out = self.activation(out + _bias('bias1', out.dtype))
    out = layers.max_pool(out, window=3, stride=2)
    out, records = base.run_blocks(self.blocks, out, is_training=is_training,
                                   return_metrics=return_metrics, remat=self.remat)
    # The classifier's scalar bias is added to the pooled features after dropout.
    fc = lambda pool: self.fc(pool + _bias('bias2', pool.dtype))
    outputs = base.pooled_head(fc, out, drop_rate=self.drop_rate, is_training=is_training)
    if return_metrics:
      outputs['signal'] = base.stack_signal(records, self.transitions)
    return outputs


SPECS: list[base.ModelSpec] = depth_specs('fixup_resnet', FixUp_ResNet, lambda d: f'fixup_resnet_ResNet{d}')
