"""What every model family shares: the `ModelSpec` record and the forward-pass contract.

A family module (e.g. `nfnet_jax.models.nfnet`) must expose

  SPECS: list[ModelSpec]   one entry per registered variant name.

Each spec's `constructor(num_classes=..., **default_kwargs, **overrides)` builds an
`hk.Module` whose call

  module(images, is_training: bool, return_metrics: bool = False) -> dict

returns 'logits' (float32 [B, num_classes]) and, when return_metrics=True, 'signal':
the dict made by `stack_signal` (one entry per residual block). The module must draw
randomness (dropout, stochastic depth) from hk.next_rng_key() only when is_training.
The registry (`nfnet_jax.models.registry`) turns a spec into an hk.TransformedWithState.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import types
from typing import Any

import haiku as hk
from haiku._src import stateful as hk_stateful  # Haiku's own way to lift a jax transform
import jax
import jax.numpy as jnp

from nfnet_jax import layers


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything the registry and its users need to know about one named variant.

  Attributes:
    name: registry name, e.g. 'nfnet_f0'.
    family: 'nfnet', 'nf_regnet', 'nf_resnet' or 'resnet'.
    train_image_size: image size the variant is trained at.
    test_image_size: image size the variant is evaluated at.
    drop_rate: dropout rate before the classifier by default.
    min_image_size: smallest input height/width the model accepts (its total stride).
    official_layout: JSON stem in shared/official_layout (e.g. 'nfnet_F0'), or None.
    default_kwargs: constructor kwargs this variant is built with (besides num_classes).
    constructor: callable building the hk.Module; accepts num_classes and the kwargs.
  """
  name: str
  family: str
  train_image_size: int
  test_image_size: int
  drop_rate: float
  min_image_size: int
  official_layout: str | None
  default_kwargs: Mapping[str, Any]
  constructor: Callable[..., hk.Module]

  def __post_init__(self):
    # Read-only view, so a spec can't be changed by accident through its kwargs.
    object.__setattr__(self, "default_kwargs",
                       types.MappingProxyType(dict(self.default_kwargs)))


def stack_signal(records: Sequence[Mapping[str, jax.Array]],
                 transitions: Sequence[bool]) -> dict[str, jax.Array]:
  """Stacks per-block statistics into the 'signal' output: 1-D arrays, one entry per block.

  Args:
    records: per residual block, a dict with 'avg_sq_mean' and 'avg_var' of the stream
      after the block (see `layers.signal_stats`) and 'res_avg_var', the average channel
      variance of the residual branch output before it is added.
    transitions: per block, True for the first block of each stage.
  """
  if len(records) != len(transitions):
    raise ValueError(f"{len(records)} block records but {len(transitions)} transition flags.")
  return {
      "avg_sq_mean": jnp.stack([r["avg_sq_mean"] for r in records]),
      "avg_var": jnp.stack([r["avg_var"] for r in records]),
      "res_avg_var": jnp.stack([r["res_avg_var"] for r in records]).astype(jnp.float32),
      "transition": jnp.asarray([bool(t) for t in transitions], dtype=bool),
  }


def check_images(images: jax.Array, min_image_size: int, model: str) -> None:
  """Raises a clear ValueError (at trace time) for inputs the model cannot take."""
  if images.ndim != 4:
    raise ValueError(f"{model}: images must be NHWC [batch, height, width, channels], "
                     f"got shape {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{model}: images must be a float array (float32 or bfloat16), "
                     f"got {images.dtype}; normalise them first.")
  h, w = images.shape[1:3]
  if h < min_image_size or w < min_image_size:
    raise ValueError(f"{model}: images of {h}x{w} are smaller than the minimum "
                     f"{min_image_size}x{min_image_size}; resize them.")


def check_resnet_options(width: int, drop_rate: float, stochdepth_rate: float) -> None:
  """Raises a clear ValueError for a ResNet-family width or rate out of range."""
  if width < 1:
    raise ValueError(f"width must be a positive integer, got {width}.")
  if not 0.0 <= drop_rate < 1.0:
    raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}.")
  if not 0.0 <= stochdepth_rate < 1.0:
    raise ValueError(f"stochdepth_rate must be in [0, 1), got {stochdepth_rate}.")


def late_checkpoint(fun: Callable) -> Callable:
  """jax.checkpoint whose recomputation waits for the output's cotangent.

  XLA:CPU drops jax.checkpoint's optimization barriers before scheduling and runs the recomputed
  forward pass as early as it can, during the forward pass, which keeps every activation alive.
  Here the positional inputs of the recomputation are made to depend on the cotangent (plus
  0·ct[0]), so it cannot start before the backward pass reaches the block.
  """
  def wrapped(*args, **kwargs):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    num_args = len(jax.tree.leaves(args))  # positional leaves come first
    call = lambda *xs: fun(*(u := jax.tree.unflatten(treedef, xs))[0], **u[1])
    # Trace once now (inside Haiku's frame); the backward pass replays the traced function.
    pure, consts = jax.closure_convert(call, *leaves)
    n = len(consts)
    primal = lambda *xs: pure(*xs[n:], *xs[:n])

    def backward(xs, ct):
      floats = [c for c in jax.tree.leaves(ct) if jnp.issubdtype(c.dtype, jnp.floating)]
      zero = sum(c.reshape(-1)[0].astype(jnp.float32) for c in floats) * 0.0
      xs = [x + zero.astype(x.dtype) if n <= i < n + num_args and jnp.issubdtype(x.dtype, jnp.floating)
            else x for i, x in enumerate(xs)]
      return jax.vjp(primal, *xs)[1](ct)

    run = jax.custom_vjp(primal)
    run.defvjp(lambda *xs: (primal(*xs), xs), backward)
    return run(*consts, *leaves)
  return wrapped


# The Haiku version (params, state and rng threaded through), built the way hk.remat is.
hk_late_checkpoint = hk_stateful.thread_hk_state_in_kwargs(late_checkpoint)


def run_blocks(blocks: Sequence[Callable], x: jax.Array, *, is_training: bool,
               return_metrics: bool, remat: bool = False) -> tuple[jax.Array, list[dict]]:
  """Applies residual blocks in order (each under hk_late_checkpoint when `remat`).

  Every block maps `(x, is_training=, return_metrics=)` to `(x, res_avg_var)`. Returns the output
  and, with return_metrics, one signal record per block for `stack_signal`.
  """
  records = []
  for block in blocks:
    run = functools.partial(block, is_training=is_training, return_metrics=return_metrics)
    x, res_avg_var = (hk_late_checkpoint(run) if remat else run)(x)
    if return_metrics:
      records.append(dict(layers.signal_stats(x), res_avg_var=res_avg_var))
  return x, records


def pooled_head(fc: Callable, features: jax.Array, *, drop_rate: float,
                is_training: bool) -> dict[str, jax.Array]:
  """Global average pool (float32), dropout when training, then `fc`: {'pool', 'logits'}."""
  pool = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
  outputs = {"pool": pool}
  if is_training and drop_rate > 0.0:
    pool = hk.dropout(hk.next_rng_key(), drop_rate, pool)
  outputs["logits"] = fc(pool).astype(jnp.float32)
  return outputs
