"""The training config: every key the trainer reads, and its validation before anything compiles."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections

from nfnet_jax import data as data_lib
from nfnet_jax import evals as evals_lib
from nfnet_jax import models
from nfnet_jax import optim


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
  c.eval_every_steps = 10000            # and at the end; 0: never during training
  c.seed = 0
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


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None,
             for_training: bool = True) -> Run:
  """Checks `config` against the model, the dataset and the devices; raises ConfigError.

  Runs before any compilation, so a bad config costs seconds, not a compile. for_training=False
  (evaluation) skips the checks of the training batch against the devices and the training split.
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
    info = data_lib.get_info(config.dataset, data_dir=config.data_dir)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f'config.dataset={config.dataset!r}: {e}') from None
  try:
    data_lib.parse_augment(config.augment)
  except ValueError as e:
    raise ConfigError(f'config.augment={config.augment!r}: {e}') from None

  b, a = config.batch_size, config.grad_accum_steps
  _check(isinstance(a, int) and a >= 1, f'config.grad_accum_steps={a!r} must be an integer >= 1.')
  _check(isinstance(b, int) and b >= 1, f'config.batch_size={b!r} must be a positive integer.')
  _check(b % (device_count * a) == 0 or not for_training,
         f'config.batch_size={b} must be divisible by devices x grad_accum_steps = '
         f'{device_count} x {a} = {device_count * a}; choose e.g. batch_size='
         f'{max(1, b // (device_count * a)) * device_count * a}.')
  eval_batch_size = config.eval_batch_size or b   # any size: eval batches are padded per device

  image_size = config.image_size or spec.train_image_size
  eval_image_size = config.eval_image_size or spec.test_image_size
  for key, size in (('image_size', image_size), ('eval_image_size', eval_image_size)):
    _check(size >= spec.min_image_size,
           f'config.{key}={size} is too small for {config.model}: it needs at least '
           f'{spec.min_image_size} pixels.')

  eval_split = config.eval_split or info.eval_split
  _check(eval_split in info.splits,
         f'config.eval_split={eval_split!r} is not a split of {info.name}; it has {sorted(info.splits)}.')
  _check(0.0 <= config.label_smoothing < 1.0,
         f'config.label_smoothing={config.label_smoothing} must be in [0, 1).')
  _check(0.0 <= config.ema_decay <= 1.0, f'config.ema_decay={config.ema_decay} must be in [0, 1].')
  for key in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _check(isinstance(config[key], int) and config[key] >= 1,
           f'config.{key}={config[key]!r} must be an integer >= 1.')
  _check(isinstance(config.eval_every_steps, int) and config.eval_every_steps >= 0,
         f'config.eval_every_steps={config.eval_every_steps!r} must be an integer >= 0 '
         '(0: no evaluation during training).')
  _check(config.eval_preprocess in ('resize_crop_32', 'crop_resize'),
         f"config.eval_preprocess={config.eval_preprocess!r} must be 'resize_crop_32' or 'crop_resize'.")

  train_examples = info.splits[info.train_split]
  _check(train_examples >= b or not for_training,
         f'config.batch_size={b} exceeds the {train_examples} training examples of {info.name}.')
  steps_per_epoch = max(1, train_examples // b)
  if config.total_steps is not None:
    _check(config.total_steps >= 1, f'config.total_steps={config.total_steps} must be >= 1.')
    total_steps = config.total_steps
  else:
    _check(config.num_epochs > 0, f'config.num_epochs={config.num_epochs} must be > 0 '
           '(or set config.total_steps).')
    total_steps = max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))

  try:
    optim.create(config.optimizer, global_batch_size=b, total_steps=total_steps,
                 steps_per_epoch=max(1, steps_per_epoch))
  except ValueError as e:
    raise ConfigError(f'config.optimizer: {e}') from None

  return Run(config=config, spec=spec, info=info, image_size=image_size,
             eval_image_size=eval_image_size, eval_split=eval_split,
             eval_batch_size=eval_batch_size, per_device_batch=max(1, b // (device_count * a)),
             steps_per_epoch=steps_per_epoch, total_steps=total_steps)
