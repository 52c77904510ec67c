"""The pmap data-parallel trainer: config, state, the pure step, checkpoints, writers and the loop."""

from nfnet_jax.train.checkpoints import Checkpointer, TerminationFlag
from nfnet_jax.train.config import ConfigError, Run, base_config, validate
from nfnet_jax.train.distributed import initialize
from nfnet_jax.train.loop import NonFiniteLossError, train_and_evaluate
from nfnet_jax.train.state import TrainState, ema_decay_at, ema_update, init_state
from nfnet_jax.train.step import make_train_step, smoothed_cross_entropy

__all__ = [
    'Checkpointer', 'ConfigError', 'NonFiniteLossError', 'Run', 'TerminationFlag', 'TrainState',
    'base_config', 'ema_decay_at', 'ema_update', 'init_state', 'initialize', 'make_train_step',
    'smoothed_cross_entropy', 'train_and_evaluate', 'validate',
]
