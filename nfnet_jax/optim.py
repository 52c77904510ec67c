"""The NFNet optimizer built from optax: AGC, coupled weight decay, Nesterov SGD, warmup-cosine.

With the defaults of `get_config()` the optimizer equals DeepMind's `SGD_AGC` recipe for NFNets
(Brock, De, Smith & Simonyan 2021, Sec. 4; deepmind-research/nfnets) step for step: per parameter,
  1. AGC (Eq. 3) on every parameter except the final classifier weight;
  2. g += weight_decay * w on everything except gains, biases and BN scale/offset;
  3. m <- momentum * m + g;  g <- g + momentum * m (Nesterov, no dampening);
  4. w <- w - lr(step) * g, with lr(step) rising linearly from 0 over warmup_epochs epochs, then a
     cosine to 0 at total_steps; lr = config.lr * global_batch_size / 256 at its peak.
With `trainable` (regexes searched in each 'module/name' path) the steps above run on the matching
params only (optax.multi_transform); the others get no update, no weight decay and no momentum.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nfnet_jax import agc
from nfnet_jax import extras
from nfnet_jax import sam

NAMES = ('sgd', 'adamw', 'lamb')
SCHEDULES = ('cosine', 'constant')
CLIP_MODES = ('agc', 'global_norm', 'none')
CLIP_EXCLUDES = ('final_weight', 'head', 'none')
# Parameter names (last path component) that get no weight decay, as in DeepMind's recipe.
_NO_DECAY_NAMES = ('b', 'scale', 'offset')
_NO_DECAY_SUBSTRINGS = ('gain', 'bias')


# The paper's optimizer recipe (NFNet-F0 on ImageNet at batch 4096).
DEFAULTS = dict(
    name='sgd',  # 'sgd' | 'adamw' | 'lamb'.
    lr=0.1,  # Peak learning rate per 256 examples; scaled by global_batch_size / 256.
    momentum=0.9,  # sgd only; 0 disables momentum.
    nesterov=True,  # sgd only.
    weight_decay=2e-5,  # Coupled (added to the gradient) for sgd, decoupled for adamw/lamb.
    warmup_epochs=5.0,  # Linear warmup from 0, in (possibly fractional) epochs.
    schedule='cosine',  # After warmup: 'cosine' to 0 at total_steps, or 'constant'.
    clipping=0.01,  # AGC threshold (or the global norm); None disables clipping.
    clip_mode='agc',  # 'agc' (unit-wise, Eq. 3), 'global_norm' (the paper's ablation) or 'none'.
    clip_eps=1e-3,  # AGC's floor on parameter norms.
    clip_exclude='final_weight',  # AGC skips: 'final_weight', 'head' (weight+bias) or 'none'.
    report_clip_fraction=True,  # Keep the fraction of units AGC clipped in the state.
    b1=0.9,  # adamw/lamb first-moment decay.
    b2=0.999,  # adamw/lamb second-moment decay.
    adam_eps=1e-8,  # adamw/lamb denominator epsilon.
    sam_rho=0.0,  # SAM's ascent radius ρ (nfnet_jax.sam, applied by the train step); 0: no SAM.
    sam_mode='device',  # SAM's ascent gradient: each device's micro-batch, or 'global'.
)


def get_config():
  """`DEFAULTS` as an ml_collections.ConfigDict (the `train` extra); `create` also takes a dict."""
  ml_collections = extras.require('ml_collections', 'optim.get_config')
  return ml_collections.ConfigDict(DEFAULTS)


def _bad(key: str, value: Any, need: str):
  return ValueError(f'optimizer config: {key}={value!r} is invalid; it must be {need}.')


def _number(cfg, key, *, low=None, high=None, low_open=False, high_open=False, allow_none=False):
  """Checks cfg[key] is a real number in the given range."""
  value = cfg[key]
  if value is None and allow_none:
    return None
  desc = 'a number'
  if low is not None:
    desc += f' {">" if low_open else ">="} {low}'
  if high is not None:
    desc += f'{" and" if low is not None else ""} {"<" if high_open else "<="} {high}'
  if allow_none:
    desc += ' (or None)'
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise _bad(key, value, desc)
  if low is not None and (value < low or (low_open and value == low)):
    raise _bad(key, value, desc)
  if high is not None and (value > high or (high_open and value == high)):
    raise _bad(key, value, desc)
  return float(value)


def _choice(cfg, key, options):
  if cfg[key] not in options:
    raise _bad(key, cfg[key], f'one of {list(options)}')
  return cfg[key]


def _flag(cfg, key):
  if not isinstance(cfg[key], bool):
    raise _bad(key, cfg[key], 'True or False')
  return cfg[key]


def _validated(config) -> dict:
  """Returns config as a dict with defaults filled in; raises ValueError naming a bad key."""
  defaults = DEFAULTS
  items = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  unknown = sorted(set(items) - set(defaults))
  if unknown:
    raise ValueError(f'optimizer config: unknown key(s) {unknown}; valid keys are '
                     f'{sorted(defaults)}.')
  cfg = {**defaults, **items}
  _choice(cfg, 'name', NAMES)
  _number(cfg, 'lr', low=0, low_open=True)
  _number(cfg, 'momentum', low=0, high=1, high_open=True)
  _flag(cfg, 'nesterov')
  _number(cfg, 'weight_decay', low=0)
  _number(cfg, 'warmup_epochs', low=0)
  _choice(cfg, 'schedule', SCHEDULES)
  _number(cfg, 'clipping', low=0, low_open=True, allow_none=True)
  _choice(cfg, 'clip_mode', CLIP_MODES)
  _number(cfg, 'clip_eps', low=0)
  _choice(cfg, 'clip_exclude', CLIP_EXCLUDES)
  _flag(cfg, 'report_clip_fraction')
  _number(cfg, 'b1', low=0, high=1, high_open=True)
  _number(cfg, 'b2', low=0, high=1, high_open=True)
  _number(cfg, 'adam_eps', low=0, low_open=True)
  _number(cfg, 'sam_rho', low=0)
  _choice(cfg, 'sam_mode', sam.MODES)
  return cfg


def _check_run(global_batch_size, total_steps, steps_per_epoch):
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, numbers.Integral) \
      or global_batch_size < 1:
    raise ValueError(f'global_batch_size must be a positive int, got {global_batch_size!r}.')
  if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) \
      or total_steps < 1:
    raise ValueError(f'total_steps must be a positive int, got {total_steps!r}.')
  if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, numbers.Real) \
      or not math.isfinite(steps_per_epoch) or steps_per_epoch <= 0:
    raise ValueError(f'steps_per_epoch must be a number > 0, got {steps_per_epoch!r}.')


def _schedule(cfg: dict, global_batch_size, total_steps, steps_per_epoch) -> optax.Schedule:
  _check_run(global_batch_size, total_steps, steps_per_epoch)
  peak = cfg['lr'] * global_batch_size / 256
  warmup = float(cfg['warmup_epochs']) * float(steps_per_epoch)
  if warmup >= total_steps:
    raise ValueError(
        f'optimizer config: warmup_epochs={cfg["warmup_epochs"]} gives {warmup:g} warmup steps, '
        f'not fewer than total_steps={total_steps}; lower warmup_epochs or train longer.')
  cosine = cfg['schedule'] == 'cosine'

  def schedule(count):
    step = jnp.asarray(count, jnp.float32)
    if cosine:
      t = jnp.clip((step - warmup) / (total_steps - warmup), 0.0, 1.0)
      after = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * t))
    else:
      after = jnp.full_like(step, peak)
    if warmup == 0:
      return after
    return jnp.where(step <= warmup, peak * (step / warmup), after)

  return schedule


def create_schedule(config, *, global_batch_size: int, total_steps: int,
                    steps_per_epoch: float) -> optax.Schedule:
  """Learning rate at each update: linear warmup from 0, then cosine to 0 (or constant).

  Args:
    config: an optimizer config (see `get_config`).
    global_batch_size: examples per update over all devices; the peak is lr * that / 256.
    total_steps: number of updates of the whole run; the cosine reaches 0 there and stays.
    steps_per_epoch: updates per epoch (a float, e.g. 1281167 / 4096); warmup lasts
      warmup_epochs * steps_per_epoch updates, not rounded.

  Returns:
    A function of the update count (0 for the first update) giving the learning rate.
  """
  return _schedule(_validated(config), global_batch_size, total_steps, steps_per_epoch)


def _flat(params):
  keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
  return [agc.path_to_str(k) for k, _ in keyed], [v for _, v in keyed], treedef


def weight_decay_mask(params) -> Any:
  """True for the parameters that get weight decay.

  Excluded, as in DeepMind's recipe: leaves named 'b', 'scale', 'offset' or containing 'gain' or
  'bias' (gains, biases, skip gains, BN scale/offset); also any other scalar or vector (at most
  one dimension larger than 1), whatever its name.
  """
  paths, leaves, treedef = _flat(params)
  decay = []
  for path, leaf in zip(paths, leaves):
    name = path.rpartition('/')[2]
    vector_like = sum(1 for d in np.shape(leaf) if d != 1) <= 1
    no_decay = (name in _NO_DECAY_NAMES or any(s in name for s in _NO_DECAY_SUBSTRINGS)
                or vector_like)
    decay.append(not no_decay)
  return jax.tree_util.tree_unflatten(treedef, decay)


def classifier_module(params) -> str:
  """The Haiku module path of the final classifier, e.g. 'NFNet/~/linear'.

  It is the one direct child of the root module ('<root>/~/<name>') that holds a 2-D weight;
  squeeze-excite and other linears sit deeper, stems and final convs hold 4-D kernels. This holds
  for every NFNet, NF-ResNet, NF-RegNet and BN-ResNet layout.

  Raises:
    ValueError: if there is not exactly one such module.
  """
  paths, leaves, _ = _flat(params)
  found = []
  for path, leaf in zip(paths, leaves):
    module = path.rpartition('/')[0]
    if module.count('/~/') == 1 and np.ndim(leaf) == 2 and module not in found:
      found.append(module)
  if len(found) != 1:
    raise ValueError(
        'Cannot identify the final classifier: expected exactly one top-level Haiku module '
        f'(\'<root>/~/<name>\') with a 2-D weight, found {found}. Use clip_exclude=\'none\' or '
        'build the optimizer yourself with nfnet_jax.agc.adaptive_grad_clip(mask=...).')
  return found[0]


def _has_frozen(params) -> bool:
  """True inside optax.multi_transform/masked, where frozen params are MaskedNode placeholders."""
  is_node = lambda x: isinstance(x, optax.MaskedNode)
  return any(is_node(x) for x in jax.tree_util.tree_leaves(params, is_leaf=is_node))


def clip_mask(params, exclude: str = 'final_weight') -> Any:
  """True for the parameters AGC clips.

  Args:
    params: the parameter tree (Haiku paths).
    exclude: 'final_weight' skips the classifier's 2-D weight (DeepMind's recipe, which still
      clips its bias), 'head' skips the whole classifier module, 'none' skips nothing.

  Returns:
    A pytree of bools with the structure of `params`.
  """
  if exclude not in CLIP_EXCLUDES:
    raise ValueError(f'clip_exclude must be one of {list(CLIP_EXCLUDES)}, got {exclude!r}.')
  paths, leaves, treedef = _flat(params)
  if exclude == 'none':
    return jax.tree_util.tree_unflatten(treedef, [True] * len(leaves))
  try:
    head = classifier_module(params)
  except ValueError:
    if not _has_frozen(params):
      raise
    head = None  # the classifier is frozen, so there is nothing to exclude among these params
  clip = []
  for path, leaf in zip(paths, leaves):
    in_head = path.rpartition('/')[0] == head
    skip = in_head and (exclude == 'head' or np.ndim(leaf) == 2)
    clip.append(not skip)
  return jax.tree_util.tree_unflatten(treedef, clip)


def _clipper(cfg) -> Optional[optax.GradientTransformation]:
  if cfg['clipping'] is None or cfg['clip_mode'] == 'none':
    return None
  if cfg['clip_mode'] == 'global_norm':
    return optax.clip_by_global_norm(cfg['clipping'])
  transform = agc.adaptive_grad_clip(cfg['clipping'], cfg['clip_eps'],
                                     report=cfg['report_clip_fraction'])
  if cfg['clip_exclude'] == 'none':
    return transform
  exclude = cfg['clip_exclude']
  return optax.masked(transform, lambda params: clip_mask(params, exclude))


def parse_trainable(trainable) -> list[str]:
  """'a,b' or ['a', 'b'] -> ['a', 'b'] (empty: everything trains); raises ValueError on bad regexes."""
  if not trainable:
    return []
  patterns = trainable.split(',') if isinstance(trainable, str) else list(trainable)
  patterns = [p.strip() for p in patterns if p.strip()]
  for p in patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f'trainable pattern {p!r} is not a regular expression: {e}.') from None
  return patterns


def trainable_mask(params, trainable) -> Any:
  """True for the params whose path 'module/name' contains a match of one of the `trainable` regexes.

  Raises:
    ValueError: naming every pattern that matches no param (with a few of the paths there are).
  """
  patterns = parse_trainable(trainable)
  paths, _, treedef = _flat(params)
  if not patterns:
    return jax.tree_util.tree_unflatten(treedef, [True] * len(paths))
  unmatched = [p for p in patterns if not any(re.search(p, path) for path in paths)]
  if unmatched:
    heads = sorted({path.rpartition('/')[0] for path in paths})
    raise ValueError(
        f'trainable pattern(s) {unmatched} match no parameter; paths look like '
        f'{", ".join(paths[:2] + paths[-2:])} (modules: {", ".join(heads[:3])}, ..., {heads[-1]}).')
  return jax.tree_util.tree_unflatten(
      treedef, [any(re.search(p, path) for p in patterns) for path in paths])


def describe_trainable(params, trainable) -> str:
  """One line: how many params (and values) `trainable` selects, e.g. for the training log."""
  mask = jax.tree.leaves(trainable_mask(params, trainable))
  sizes = [int(np.size(x)) for x in jax.tree.leaves(params)]
  chosen = sum(s for s, m in zip(sizes, mask) if m)
  return (f'trainable {trainable!r}: {sum(mask)} of {len(mask)} params train ({chosen:,} of '
          f'{sum(sizes):,} values); the others are frozen.')


def freeze(transform: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
  """`transform` on the params matching `trainable` (see `trainable_mask`); zero updates and no
  state for the rest. Without patterns, `transform` itself."""
  patterns = parse_trainable(trainable)
  if not patterns:
    return transform
  labels = lambda params: jax.tree.map(lambda t: 'trainable' if t else 'frozen',
                                       trainable_mask(params, patterns))
  return optax.multi_transform({'trainable': transform, 'frozen': optax.set_to_zero()}, labels)


def create(config, *, global_batch_size: int, total_steps: int,
           steps_per_epoch: float, trainable=None) -> optax.GradientTransformation:
  """Builds the optimizer described by `config` (see `get_config` and the module docstring).

  The clip (AGC or global norm) comes first and composes with every optimizer. `sgd` uses coupled
  weight decay (added to the gradient before momentum); `adamw` and `lamb` are optax's, with
  decoupled weight decay on the same parameters.

  Args:
    config: an `ml_collections.ConfigDict` or a dict with keys of `DEFAULTS`; missing keys
      take their defaults, unknown keys are an error.
    global_batch_size: examples per update over all devices.
    total_steps: updates in the whole run.
    steps_per_epoch: updates per epoch (float).
    trainable: comma-separated regexes (or a list) selecting the params that train (`freeze`);
      empty or None: all of them.

  Returns:
    An `optax.GradientTransformation`; its `update` needs `params`.

  Raises:
    ValueError: naming the first invalid key.
  """
  cfg = _validated(config)
  patterns = parse_trainable(trainable)
  lr = _schedule(cfg, global_batch_size, total_steps, steps_per_epoch)
  parts = []
  clip = _clipper(cfg)
  if clip is not None:
    parts.append(clip)
  wd = cfg['weight_decay']
  if cfg['name'] == 'sgd':
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=weight_decay_mask))
    if cfg['momentum'] > 0:
      parts.append(optax.trace(decay=cfg['momentum'], nesterov=cfg['nesterov']))
    parts.append(optax.scale_by_learning_rate(lr))
  elif cfg['name'] == 'adamw':
    parts.append(optax.adamw(lr, b1=cfg['b1'], b2=cfg['b2'], eps=cfg['adam_eps'],
                             weight_decay=wd, mask=weight_decay_mask))
  else:
    parts.append(optax.lamb(lr, b1=cfg['b1'], b2=cfg['b2'], eps=cfg['adam_eps'],
                            weight_decay=wd, mask=weight_decay_mask))
  return freeze(optax.chain(*parts), patterns)


def create_fused(config, *, global_batch_size: int, total_steps: int, steps_per_epoch: float,
                 trainable=None) -> Optional[Callable]:
  """The update of `create(config, ...)` followed by the weights' EMA, fused on CPU, or None.

  Returns `update(grads, opt_state, params, ema_params, ema_decay) -> (params, opt_state,
  ema_params, grad_norm)`: the same values, to round-off, as `create`'s update,
  `optax.apply_updates`, `train.ema_update` and `train.step.global_norm(grads)`, on the same
  optimizer state, in one pass per parameter (`nfnet_jax.sgd_update`; float32 parameters only).
  None where that kernel is not available or the config is not SGD with momentum and AGC (or no
  clip), or trains only some parameters (`trainable`).
  """
  from nfnet_jax import sgd_update  # local: builds a native library on first use

  cfg = _validated(config)
  clip = cfg['clipping'] is not None and cfg['clip_mode'] != 'none'
  if (not sgd_update.available() or cfg['name'] != 'sgd' or not cfg['momentum'] > 0
      or (clip and cfg['clip_mode'] != 'agc') or parse_trainable(trainable)):
    return None
  lr = _schedule(cfg, global_batch_size, total_steps, steps_per_epoch)
  wd, exclude = cfg['weight_decay'], cfg['clip_exclude']

  def update(grads, opt_state, params, ema_params, ema_decay):
    leaves, treedef = jax.tree.flatten(params)
    if any(x.dtype != jnp.float32 for x in leaves):
      raise ValueError('the fused update takes float32 parameters only; use create(config).')
    # The states of `create`'s chain, found by type: the clip's comes first, where there is one.
    at = {type(s): i for i, s in enumerate(opt_state)}
    trace_at, lr_at = at[optax.TraceState], at[optax.ScaleByScheduleState]
    count = opt_state[lr_at].count
    decays = treedef.flatten_up_to(weight_decay_mask(params))
    clipped = (treedef.flatten_up_to(clip_mask(params, exclude)) if clip and exclude != 'none'
               else [clip] * len(leaves))
    units = []
    for w in leaves:
      axes = agc.default_axes(w.shape)
      units.append(w.shape[-1] if w.ndim >= 2 and axes == tuple(range(w.ndim - 1)) else 1)
    new, trace, ema, stats = sgd_update.update(
        leaves, treedef.flatten_up_to(grads), treedef.flatten_up_to(opt_state[trace_at].trace),
        treedef.flatten_up_to(ema_params), lr(count), ema_decay, units=units,
        clipping=[cfg['clipping'] if c else 0.0 for c in clipped],
        weight_decay=[wd if d else 0.0 for d in decays], eps=cfg['clip_eps'],
        momentum=cfg['momentum'], nesterov=cfg['nesterov'])
    new, trace, ema = (treedef.unflatten(x) for x in (new, trace, ema))
    units_clippable = sum(u for u, c in zip(units, clipped) if c)
    states = list(opt_state)
    states[trace_at] = states[trace_at]._replace(trace=trace)
    states[lr_at] = states[lr_at]._replace(count=optax.safe_increment(count))
    if clip and cfg['report_clip_fraction']:
      num_clipped = stats[1].astype(jnp.int32)
      report = agc.AdaptiveGradClipState(
          clip_fraction=num_clipped.astype(jnp.float32) / max(units_clippable, 1),
          num_clipped=num_clipped, num_units=jnp.asarray(units_clippable, jnp.int32))
      states[0] = (states[0]._replace(inner_state=report) if exclude != 'none' else report)
    return new, tuple(states), ema, jnp.sqrt(stats[0])

  return update


def clip_fraction(opt_state) -> Optional[jax.Array]:
  """Fraction of units AGC clipped at the last update, or None if no AGC reports in the state.

  Works on the state of `create(...)` or of any chain holding `adaptive_grad_clip(report=True)`;
  several reporting AGC transformations are pooled by unit count. Under pmap the result has the
  replica axis in front, like the state.
  """
  is_report = lambda x: isinstance(x, agc.AdaptiveGradClipState)
  reports = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_report) if is_report(s)]
  if not reports:
    return None
  if len(reports) == 1:
    return reports[0].clip_fraction
  clipped = sum(r.num_clipped for r in reports)
  units = sum(r.num_units for r in reports)
  return clipped.astype(jnp.float32) / jnp.maximum(units, 1).astype(jnp.float32)
