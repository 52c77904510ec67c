"""SkipInit ResNets (De & Smith 2020, "Batch normalization biases residual blocks towards the identity
function in deep networks", arXiv:2002.10444): unnormalized pre-activation ResNets whose residual
branches are multiplied by a learnable scalar g initialised at zero, h_{i+1} = h_i + g · f_i(h_i).

The NF-ResNet paper's (arXiv:2101.08692) first baseline. Unlike NF-ResNets there is no β/α
variance bookkeeping, no weight standardization and no γ-scaled activation: plain convs with biases
(Haiku's default fan-in init) and a plain ReLU. Module paths equal DeepMind's
`nfnets/skipinit_resnet.py`, e.g. 'SkipInit_ResNet/~/nf_res_block_7/~/conv1'.
"""
from __future__ import annotations

import haiku as hk
import jax.numpy as jnp

from nfnet_jax import layers
from nfnet_jax.models import base
from nfnet_jax.models.nf_resnet import NFResBlock
from nfnet_jax.models.resnet import (STAGE_CHANNELS, STAGE_STRIDES, _activation, check_depth,
                                     depth_specs)


class SkipInit_ResNet(hk.Module):  # pylint: disable=invalid-name  (official module name)
  """SkipInit-ResNet-{50...600}: pre-activation bottlenecks h + g · f(h), g = 0 at init.

  Args:
    num_classes: classifier outputs.
    depth: 50, 101, 152, 200, 288 or 600, or 4 blocks-per-stage counts.
    width: channel multiplier; stage outputs are (64, 128, 256, 512) · width.
    stochdepth_rate: final block's stochastic depth rate; block i uses rate · i / num_blocks.
    drop_rate: dropout before the classifier (training only). DeepMind's default (None) reads a
      missing variant entry and raises KeyError; 0 here.
    activation: name of a jax.nn activation (not γ-scaled).
    skipinit_gain: initial value of every g (0 is SkipInit; 1 shows the unnormalized ResNet's
      variance growth in signal propagation plots).
    fc_init: classifier weight init, zeros by default as in DeepMind's code.
    remat: recompute each residual block in the backward pass (see base.late_checkpoint).
  """

  def __init__(self, num_classes: int = 1000, depth: int | tuple[int, ...] = 50, width: int = 4,
               stochdepth_rate: float = 0.1, drop_rate: float = 0.0, activation: str = 'relu',
               skipinit_gain: float = 0.0, fc_init=None, remat: bool = False,
               name: str = 'SkipInit_ResNet'):
    super().__init__(name=name)
    depth_pattern = check_depth(depth)
    base.check_resnet_options(width, drop_rate, stochdepth_rate)
    self.activation = _activation(activation)
    self.drop_rate, self.remat = drop_rate, remat
    ch = 16 * width
    self.initial_conv = hk.Conv2D(ch, 7, stride=2, with_bias=False, name='initial_conv')
    rates = layers.stochdepth_rates(sum(depth_pattern), stochdepth_rate)
    self.blocks, self.transitions = [], []
    for mult, stage_depth, stride in zip(STAGE_CHANNELS, depth_pattern, STAGE_STRIDES):
      for i in range(stage_depth):
        # β = α = 1: the NF block reduces to SkipInit's h + g · f(h) with plain biased convs.
        self.blocks.append(NFResBlock(
            ch, mult * width, stride=stride if i == 0 else 1, beta=1.0, alpha=1.0,
            activation=self.activation, which_conv=hk.Conv2D,
            stochdepth_rate=rates[len(self.blocks)], skipinit_gain=skipinit_gain))
        self.transitions.append(i == 0)
        ch = mult * width
    self.fc = hk.Linear(num_classes, w_init=fc_init or jnp.zeros, name='linear')

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = layers.max_pool(self.initial_conv(x), window=3, stride=2)
    out, records = base.run_blocks(self.blocks, out, is_training=is_training,
                                   return_metrics=return_metrics, remat=self.remat)
    outputs = base.pooled_head(self.fc, self.activation(out), drop_rate=self.drop_rate,
                               is_training=is_training)
    if return_metrics:
      outputs['signal'] = base.stack_signal(records, self.transitions)
    return outputs


SPECS: list[base.ModelSpec] = depth_specs('skipinit_resnet', SkipInit_ResNet, lambda d: f'skipinit_resnet_ResNet{d}')
