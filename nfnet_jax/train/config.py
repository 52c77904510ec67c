"""The training config: every key the trainer reads, and its validation before anything compiles."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax

from nfnet_jax import data as data_lib
from nfnet_jax import evals as evals_lib
from nfnet_jax import extras
from nfnet_jax import models
from nfnet_jax import optim
from nfnet_jax import paths
from nfnet_jax.train import checkpoints

ml_collections = extras.require('ml_collections', 'training configs (nfnet_jax.train)')


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with neutral defaults; configs/*.py override them."""
  c = ml_collections.ConfigDict()
  c.model = 'nfnet_f0'
  c.model_kwargs = ml_collections.ConfigDict()   # passed to models.create(name, **model_kwargs)
  c.dataset = 'imagenet2012'
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.batch_size = 4096                    # global, over all devices of all hosts
  c.grad_accum_steps = 1                 # micro-batches per optimizer step
  c.num_epochs = 360.0
  c.total_steps = ml_collections.FieldReference(None, field_type=int)   # overrides num_epochs
  c.image_size = ml_collections.FieldReference(None, field_type=int)    # None: the variant's
  c.eval_image_size = ml_collections.FieldReference(None, field_type=int)
  c.eval_preprocess = 'resize_crop_32'
  c.eval_split = ml_collections.FieldReference(None, field_type=str)    # None: the dataset's
  c.eval_batch_size = ml_collections.FieldReference(None, field_type=int)  # None: batch_size
  # Named eval sets (nfnet_jax.evals.eval_set); the eval_* keys above are their defaults.
  c.evals = ml_collections.ConfigDict({'val': evals_lib.eval_set()})
  c.augment = 'cutmix_mixup_randaugment_405'
  c.label_smoothing = 0.1
  c.bf16 = True
  c.ema_decay = 0.99999
  c.optimizer = optim.get_config()
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.keep_every_steps = ml_collections.FieldReference(None, field_type=int)  # also keep every Nth step
  c.async_checkpoints = True            # write checkpoints while training goes on
  c.device_prefetch = 2                 # batches copied to the devices ahead of the step
  c.tensorboard = True                  # event files in WORKDIR/tensorboard (and metrics.jsonl)
  c.eval_every_steps = 10000            # and at the end; 0: never during training
  c.seed = 0
  # Fine-tuning (nfnet_jax/train/init_from.py, optim.freeze, data/folder.py).
  c.init_from = ''                       # params file or run workdir for the step-0 params
  c.init_from_ema = False                # with a workdir: take its EMA params
  c.init_head = 'auto'                   # 'auto' | 'reset' | 'keep' (see train/init_from.py)
  c.trainable = ''                       # comma-separated regexes on 'module/name'; '': all
  c.folder_val_fraction = 0.1            # 'folder:' datasets without val/: held-out fraction
  return c


RESNET_DEPTHS = (50, 101, 152, 200, 288, 600)


def resnet_recipe_config(family: str, depth: str | int, **model_kwargs) -> ml_collections.ConfigDict:
  """The 90-epoch ImageNet ResNet recipe the NF-ResNet paper uses for NF and BN ResNets alike.

  Batch 1024, SGD with Nesterov momentum 0.9, lr 0.1 x batch/256, 5 warm-up epochs, cosine decay,
  weight decay 5e-5, no AGC, EMA, label smoothing 0.1, bfloat16 compute, no MixUp/CutMix or
  RandAugment. `family` is the registry prefix ('nf_resnet' or 'resnet'); `depth` one of
  RESNET_DEPTHS (a string from the command line, '' meaning 50).
  """
  depth = int(depth or 50)
  if depth not in RESNET_DEPTHS:
    raise ValueError(f'unknown {family} depth {depth}; choose one of {RESNET_DEPTHS}.')
  c = base_config()
  c.model = f'{family}{depth}'
  c.model_kwargs = ml_collections.ConfigDict(model_kwargs)
  c.batch_size = 1024
  c.num_epochs = 90.0
  c.augment = 'none'
  c.optimizer.weight_decay = 5e-5
  c.optimizer.clipping = None
  c.eval_every_steps = 5000
  c.evals = evals_lib.imagenet_evals()
  return c


@dataclasses.dataclass(frozen=True)
class Run:
  """A validated config with every derived quantity the loop needs."""
  config: ml_collections.ConfigDict
  spec: Any               # models.ModelSpec
  info: Any               # data.DatasetInfo
  image_size: int
  eval_image_size: int
  eval_split: str
  eval_batch_size: int
  per_device_batch: int
  steps_per_epoch: int
  total_steps: int


class ConfigError(ValueError):
  """A config that cannot run; the message says which key and what to do."""


def _check(cond: bool, message: str) -> None:
  if not cond:
    raise ConfigError(message)


def _int_setting(config, key: str, *, minimum: int = 1, optional: bool = False) -> None:
  value = config[key]
  if optional and value is None:
    return
  _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
         f'config.{key}={value!r} must be an integer >= {minimum}'
         + (' (or None for the default).' if optional else '.'))


INIT_HEAD = ('auto', 'reset', 'keep')


def _check_init_from(config) -> None:
  _check(config.init_head in INIT_HEAD,
         f'config.init_head={config.init_head!r} must be one of {list(INIT_HEAD)}.')
  _check(isinstance(config.init_from_ema, bool),
         f'config.init_from_ema={config.init_from_ema!r} must be True or False.')
  path = config.init_from
  if not path:
    return
  if paths.isdir(path):
    _check(paths.isdir(checkpoints.checkpoint_dir(path)),
           f'config.init_from={path!r} is a directory without checkpoints/; give a training '
           "run's workdir or a params file.")
  else:
    _check(paths.exists(path),
           f'config.init_from={path!r} does not exist; give a params file (an exported .npz, '
           "DeepMind's F0_haiku.npz) or a training run's workdir.")
    _check(not config.init_from_ema,
           f"config.init_from_ema=True needs a training run's workdir; {path!r} is a params file, "
           'which holds one set of params.')


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None,
             for_training: bool = True, info: Any = None) -> Run:
  """Checks `config` against the model, the dataset and the devices; raises ConfigError.

  Runs before any compilation, so a bad config costs seconds, not a compile. Every numeric setting
  is checked (0 and negatives are errors; None is the only "default"). With for_training=False
  (evaluation, classification) the training-only settings are not checked: batch size against the
  devices and the training split, augmentation, schedule, logging and checkpoint intervals, seed.
  `info` (a data.DatasetInfo) stands in for reading the dataset's metadata (the dry run of another
  machine).
  """
  device_count = jax.device_count() if device_count is None else device_count
  missing = [k for k in base_config().keys() if k not in config]
  _check(not missing, f'config lacks keys {missing}; start from nfnet_jax.train.base_config().')

  try:
    spec = models.get_spec(config.model)
  except ValueError as e:
    raise ConfigError(f'config.model={config.model!r}: {e}') from None
  try:
    models.create(config.model, **config.model_kwargs.to_dict())
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config.model_kwargs={config.model_kwargs.to_dict()}: {e}') from None
  try:
    info = info or data_lib.get_info(config.dataset, data_dir=config.data_dir,
                                     folder_val_fraction=config.folder_val_fraction)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f'config.dataset={config.dataset!r}: {e}') from None

  for key in ('batch_size', 'grad_accum_steps'):
    _int_setting(config, key)
  for key in ('image_size', 'eval_image_size', 'eval_batch_size', 'total_steps'):
    _int_setting(config, key, optional=True)
  b, a = config.batch_size, config.grad_accum_steps
  # Any size: eval batches are padded per device.
  eval_batch_size = config.eval_batch_size if config.eval_batch_size is not None else b
  image_size = config.image_size if config.image_size is not None else spec.train_image_size
  eval_image_size = (config.eval_image_size if config.eval_image_size is not None
                     else spec.test_image_size)
  for key, size in (('image_size', image_size), ('eval_image_size', eval_image_size)):
    _check(size >= spec.min_image_size,
           f'config.{key}={size} is too small for {config.model}: it needs at least '
           f'{spec.min_image_size} pixels.')
  eval_split = config.eval_split or info.eval_split
  _check(eval_split in info.splits,
         f'config.eval_split={eval_split!r} is not a split of {info.name}; it has {sorted(info.splits)}.')
  _check(config.eval_preprocess in ('resize_crop_32', 'crop_resize'),
         f"config.eval_preprocess={config.eval_preprocess!r} must be 'resize_crop_32' or 'crop_resize'.")
  train_examples = info.splits[info.train_split]
  steps_per_epoch = max(1, train_examples // b)
  _check(isinstance(config.num_epochs, (int, float)) and config.num_epochs > 0,
         f'config.num_epochs={config.num_epochs!r} must be > 0 (or set config.total_steps).')
  total_steps = (config.total_steps if config.total_steps is not None
                 else max(1, int(math.ceil(config.num_epochs * steps_per_epoch))))
  per_device_batch = max(1, b // (device_count * a))

  if for_training:
    _check(b % (device_count * a) == 0,
           f'config.batch_size={b} must be divisible by devices x grad_accum_steps = '
           f'{device_count} x {a} = {device_count * a}; choose e.g. batch_size='
           f'{max(1, b // (device_count * a)) * device_count * a}.')
    _check(train_examples >= b,
           f'config.batch_size={b} exceeds the {train_examples} training examples of {info.name}.')
    try:
      data_lib.parse_augment(config.augment)
    except ValueError as e:
      raise ConfigError(f'config.augment={config.augment!r}: {e}') from None
    _check(0.0 <= config.label_smoothing < 1.0,
           f'config.label_smoothing={config.label_smoothing} must be in [0, 1).')
    _check(0.0 <= config.ema_decay <= 1.0, f'config.ema_decay={config.ema_decay} must be in [0, 1].')
    for key in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
      _int_setting(config, key)
    _int_setting(config, 'keep_every_steps', optional=True)
    _check(config.keep_every_steps is None
           or config.keep_every_steps % config.checkpoint_every_steps == 0,
           f'config.keep_every_steps={config.keep_every_steps} must be a multiple of '
           f'config.checkpoint_every_steps={config.checkpoint_every_steps} (or None).')
    _int_setting(config, 'eval_every_steps', minimum=0)
    _int_setting(config, 'device_prefetch', minimum=0)
    for key in ('tensorboard', 'async_checkpoints'):
      _check(isinstance(config[key], bool), f'config.{key}={config[key]!r} must be True or False.')
    _check(isinstance(config.seed, int) and 0 <= config.seed < 2**31,
           f'config.seed={config.seed!r} must be an integer in [0, 2**31).')
    try:
      optim.create(config.optimizer, global_batch_size=b, total_steps=total_steps,
                   steps_per_epoch=steps_per_epoch)
    except ValueError as e:
      raise ConfigError(f'config.optimizer: {e}') from None
    _check_init_from(config)
    if config.trainable:
      model = models.create(config.model, num_classes=info.num_classes, **config.model_kwargs.to_dict())
      images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jax.numpy.float32)
      try:
        optim.trainable_mask(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)[0],
                             config.trainable)
      except ValueError as e:
        raise ConfigError(f'config.trainable={config.trainable!r}: {e}') from None

  return Run(config=config, spec=spec, info=info, image_size=image_size,
             eval_image_size=eval_image_size, eval_split=eval_split,
             eval_batch_size=eval_batch_size, per_device_batch=per_device_batch,
             steps_per_epoch=steps_per_epoch, total_steps=total_steps)


# Keys whose change makes a saved state unusable (its structure or meaning changes).
STRUCTURAL_KEYS = ('model', 'model_kwargs', 'dataset', 'image_size', 'bf16', 'optimizer.name',
                   'trainable')
# Keys that only say how often to log, save or evaluate, or where data lives: free to change.
FREE_KEYS = ('data_dir', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
             'keep_every_steps', 'eval_every_steps', 'eval_image_size', 'eval_split',
             'eval_batch_size', 'eval_preprocess', 'evals', 'async_checkpoints', 'device_prefetch',
             'tensorboard',
             'init_from', 'init_from_ema', 'init_head')   # step-0 params only: a resume keeps its own


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value and f'{prefix}{key}' not in STRUCTURAL_KEYS:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def resume_changes(saved: dict, new: dict, *, allow: bool, workdir: str) -> list[str]:
  """Compares a workdir's saved config (JSON) with the new one; returns the changes to log.

  A change of STRUCTURAL_KEYS is refused; any other change outside FREE_KEYS (batch size,
  schedule, optimizer settings, augmentation, ...) needs `allow` (--allow_config_change).
  """
  old, now = _flatten(saved), _flatten(new)
  def free(k):
    return any(k == f or k.startswith(f + '.') for f in FREE_KEYS)
  diffs = [k for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k) and not free(k)]
  describe = [f'{k}: {old.get(k)!r} -> {now.get(k)!r}' for k in diffs]
  structural = [d for k, d in zip(diffs, describe) if k in STRUCTURAL_KEYS]
  if structural:
    raise ConfigError(f'{workdir} holds a run with a different model/optimizer/shape ('
                      f'{"; ".join(structural)}); its checkpoints cannot be resumed with this config. '
                      'Use another --workdir or the saved settings.')
  if describe and not allow:
    raise ConfigError(f'resuming {workdir} with changed settings ({"; ".join(describe)}); pass '
                      '--allow_config_change to resume with them deliberately, or use the saved ones.')
  return describe
