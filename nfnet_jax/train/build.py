"""The model, optimizer and initial state of a validated run: shared by training and evaluation."""

from __future__ import annotations

import functools

import jax

from nfnet_jax import models
from nfnet_jax import optim
from nfnet_jax.train import config as config_lib
from nfnet_jax.train.state import init_state


def build(run: config_lib.Run):
  """Model, optimizer and schedule for a validated run."""
  c = run.config
  model = models.create(c.model, num_classes=run.info.num_classes, **c.model_kwargs.to_dict())
  sizes = dict(global_batch_size=c.batch_size, total_steps=run.total_steps,
               steps_per_epoch=run.steps_per_epoch)
  return (model, optim.create(c.optimizer, trainable=c.trainable, **sizes),
          optim.create_schedule(c.optimizer, **sizes))


def fused_update(run: config_lib.Run):
  """`optim.create_fused` for the run's optimizer (None where it does not apply)."""
  c = run.config
  return optim.create_fused(c.optimizer, trainable=c.trainable, global_batch_size=c.batch_size,
                            total_steps=run.total_steps, steps_per_epoch=run.steps_per_epoch)


def initial_state_fn(run: config_lib.Run, model, optimizer):
  """A jitted rng -> TrainState (jax.eval_shape of it gives the checkpoint's structure)."""
  shape = (run.per_device_batch, run.image_size, run.image_size, 3)
  return jax.jit(functools.partial(init_state, model, optimizer, image_shape=shape))
