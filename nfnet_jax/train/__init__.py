"""The pmap data-parallel trainer: config, state, the pure step, checkpoints, writers and the loop."""

from nfnet_jax.train.checkpoints import Checkpointer, TerminationFlag
from nfnet_jax.train.config import ConfigError, Run, base_config, validate
from nfnet_jax.train.distributed import initialize
from nfnet_jax.train.state import TrainState, ema_decay_at, ema_update, init_state
from nfnet_jax.train.step import make_train_step, smoothed_cross_entropy

__all__ = [
    'Checkpointer', 'ConfigError', 'NonFiniteLossError', 'Run', 'TerminationFlag', 'TrainState',
    'base_config', 'ema_decay_at', 'ema_update', 'init_state', 'initialize', 'make_train_step',
    'smoothed_cross_entropy', 'train_and_evaluate', 'validate',

]


def __getattr__(name):
  # The loop imports nfnet_jax.evaluate, which imports this package's lower modules: the loop is
  # loaded on first use so that importing those modules never pulls the loop in.
  if name in ('NonFiniteLossError', 'train_and_evaluate'):
    from nfnet_jax.train import loop  # pylint: disable=import-outside-toplevel
    return getattr(loop, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
