"""BatchNorm ResNet baseline (He et al. 2016 v1/v2; Ioffe & Szegedy 2015 BatchNorm).

The baseline against which the NF-ResNet and NFNet papers compare. Module paths,
parameter and state names equal DeepMind's `nfnets/resnet.py` for the default
pre-activation (BN-ReLU-Conv) block, e.g. 'ResNet/~/res_block_v2_3/~/bn0'.
"""
from __future__ import annotations

from typing import Callable, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from nfnet_jax import layers
from nfnet_jax.models import base

# Blocks per stage (ResNet-50...600 as in the NF-ResNet paper, Brock et al. 2021a).
DEPTHS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    288: (24, 24, 24, 24),
    600: (50, 50, 50, 50),
}
# Output channels of each stage's blocks, before multiplying by `width`.
STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)

# Residual-branch orders: 'bn_relu_conv' is pre-activation ResNet v2 (default),
# 'relu_bn_conv' the order drawn in the NF-ResNet paper's Figure 1,
# 'conv_bn_relu' post-activation ResNet v1.
BLOCK_ORDERS = ('bn_relu_conv', 'relu_bn_conv', 'conv_bn_relu')
_BLOCK_NAMES = {'bn_relu_conv': 'res_block_v2', 'relu_bn_conv': 'res_block_relu_bn',
                'conv_bn_relu': 'res_block_v1'}


def check_depth(depth) -> tuple[int, ...]:
  """Blocks per stage for a depth in DEPTHS, or a custom sequence of 4 positive block counts."""
  if isinstance(depth, (tuple, list)):
    if len(depth) == len(STAGE_CHANNELS) and all(
        isinstance(d, int) and d > 0 for d in depth):
      return tuple(depth)
  elif depth in DEPTHS:
    return DEPTHS[depth]
  raise ValueError(f'Unknown ResNet depth {depth!r}; choose one of {sorted(DEPTHS)} or give '
                   f'{len(STAGE_CHANNELS)} positive blocks-per-stage counts, e.g. (1, 1, 1, 1).')


def _activation(name: str):
  fn = getattr(jax.nn, name, None) if isinstance(name, str) else None
  if fn is None or not callable(fn):
    raise ValueError(f'Unknown activation {name!r}; give the name of a jax.nn function, '
                     "e.g. 'relu', 'gelu', 'silu'.")
  return fn


class _BatchNorm(hk.BatchNorm):
  """hk.BatchNorm that normalises in float32 and returns the input dtype (bf16-safe)."""

  def __call__(self, x, is_training, test_local_stats=False):
    out = super().__call__(x.astype(jnp.float32), is_training, test_local_stats)
    return out.astype(x.dtype)


class ResBlock(hk.Module):
  """Bottleneck residual block 1x1 -> 3x3 (strided) -> 1x1, in one of BLOCK_ORDERS."""

  def __init__(self, out_ch: int, stride: int = 1, use_projection: bool = False,
               order: str = 'bn_relu_conv', activation=jax.nn.relu, which_norm=None,
               use_se: bool = False, se_ratio: float = 0.25, name: Optional[str] = None):
    super().__init__(name=name or _BLOCK_NAMES[order])
    self.out_ch, self.stride, self.order = out_ch, stride, order
    self.use_projection = use_projection
    self.activation = activation
    self.which_norm = which_norm
    width = out_ch // 4
    self.bn0 = which_norm(name='bn0')
    self.conv0 = hk.Conv2D(width, 1, with_bias=False, padding='SAME', name='conv0')
    self.bn1 = which_norm(name='bn1')
    self.conv1 = hk.Conv2D(width, 3, stride=stride, with_bias=False, padding='SAME',
                           name='conv1')
    self.bn2 = which_norm(name='bn2')
    self.conv2 = hk.Conv2D(out_ch, 1, with_bias=False, padding='SAME', name='conv2')
    if use_projection:
      self.conv_shortcut = hk.Conv2D(out_ch, 1, stride=stride, with_bias=False,
                                     padding='SAME', name='conv_shortcut')
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio) if use_se else None

  def _pre(self, bn, x, is_training):
    """The normalise+activate step that precedes each conv in a pre-activation block."""
    if self.order == 'bn_relu_conv':
      return self.activation(bn(x, is_training))
    return bn(self.activation(x), is_training)

  def __call__(self, x, is_training: bool, return_metrics: bool = False):
    if self.order == 'conv_bn_relu':
      shortcut = x
      if self.use_projection:
        shortcut = self.which_norm(name='shortcut_bn')(self.conv_shortcut(x), is_training)
      out = self.activation(self.bn0(self.conv0(x), is_training))
      out = self.activation(self.bn1(self.conv1(out), is_training))
      out = self.bn2(self.conv2(out), is_training)
    else:
      out = self._pre(self.bn0, x, is_training)
      shortcut = self.conv_shortcut(out) if self.use_projection else x
      out = self.conv0(out)
      out = self.conv1(self._pre(self.bn1, out, is_training))
      out = self.conv2(self._pre(self.bn2, out, is_training))
    if self.se is not None:
      out = self.se(out)  # x · 2σ(...), the NF papers' SE (the official BN ResNet omits the ×2)
    res_avg_var = layers.signal_stats(out)['avg_var'] if return_metrics else None
    out = out + shortcut
    if self.order == 'conv_bn_relu':
      out = self.activation(out)
    return out, res_avg_var


class ResNet(hk.Module):
  """BatchNorm ResNet-{50...600}; `block_order` picks v2 (default), ReLU-BN-Conv or v1.

  Args:
    num_classes: classifier outputs.
    depth: 50, 101, 152, 200, 288 or 600, or 4 blocks-per-stage counts.
    width: channel multiplier; stage outputs are (64, 128, 256, 512) · width.
    block_order: one of BLOCK_ORDERS.
    activation: name of a jax.nn activation (not γ-scaled: BatchNorm handles the scale).
    drop_rate: dropout before the classifier (training only).
    bn_axis_name: pmap/shard_map axis over which batch statistics are averaged (e.g. 'batch'),
      or None for per-device statistics.
    bn_decay, bn_eps: moving-average decay and epsilon of every BatchNorm.
    use_se, se_ratio: squeeze-and-excite on each residual branch.
    fc_init: classifier weight init (zeros, as in DeepMind's baseline).
  """

  def __init__(self, num_classes: int = 1000, depth: int | tuple[int, ...] = 50,
               width: int = 4,
               block_order: str = 'bn_relu_conv', activation: str = 'relu',
               drop_rate: float = 0.0, bn_axis_name: Optional[str] = None,
               bn_decay: float = 0.9, bn_eps: float = 1e-5, use_se: bool = False,
               se_ratio: float = 0.25, fc_init=jnp.zeros, name: str = 'ResNet'):
    super().__init__(name=name)
    self.depth_pattern = check_depth(depth)
    if block_order not in BLOCK_ORDERS:
      raise ValueError(f'Unknown block_order {block_order!r}; choose one of {BLOCK_ORDERS}.')
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
    if width < 1:
      raise ValueError(f'width must be a positive integer, got {width}.')
    self.num_classes = num_classes
    self.block_order = block_order
    self.activation = _activation(activation)
    self.drop_rate = drop_rate
    norm = lambda name: _BatchNorm(create_scale=True, create_offset=True,
                                   decay_rate=bn_decay, eps=bn_eps,
                                   cross_replica_axis=bn_axis_name, name=name)
    self.which_norm = norm
    self.initial_conv = hk.Conv2D(16 * width, 7, stride=2, padding='SAME',
                                  with_bias=False, name='initial_conv')
    if block_order == 'conv_bn_relu':
      self.initial_bn = norm('initial_bn')
    self.blocks, self.transitions = [], []
    for mult, num_blocks, stride in zip(STAGE_CHANNELS, self.depth_pattern, STAGE_STRIDES):
      for i in range(num_blocks):
        self.blocks.append(ResBlock(mult * width, stride=stride if i == 0 else 1,
                                    use_projection=i == 0, order=block_order,
                                    activation=self.activation, which_norm=norm,
                                    use_se=use_se, se_ratio=se_ratio))
        self.transitions.append(i == 0)
    if block_order != 'conv_bn_relu':
      self.final_bn = norm('final_bn')
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True, name='linear')

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = self.initial_conv(x)
    if self.block_order == 'conv_bn_relu':
      out = self.activation(self.initial_bn(out, is_training))
    out = layers.max_pool(out, window=3, stride=2)
    out, records = base.run_blocks(self.blocks, out, is_training=is_training,
                                   return_metrics=return_metrics)
    if self.block_order == 'bn_relu_conv':
      out = self.activation(self.final_bn(out, is_training))
    elif self.block_order == 'relu_bn_conv':
      out = self.final_bn(self.activation(out), is_training)
    outputs = base.pooled_head(self.fc, out, drop_rate=self.drop_rate, is_training=is_training)
    if return_metrics:
      outputs['signal'] = base.stack_signal(records, self.transitions)
    return outputs


def depth_specs(family: str, constructor: Callable,
                official_layout: Callable[[int], str | None]) -> list[base.ModelSpec]:
  """One ModelSpec per ResNet depth (FAMILY50 ... FAMILY600), trained and tested at 224 px."""
  return [base.ModelSpec(name=f'{family}{d}', family=family, train_image_size=224,
                         test_image_size=224, drop_rate=0.0, min_image_size=32,
                         official_layout=official_layout(d), default_kwargs={'depth': d},
                         constructor=constructor) for d in DEPTHS]


SPECS: list[base.ModelSpec] = depth_specs('resnet', ResNet,
                                          lambda d: 'resnet_ResNet50' if d == 50 else None)
