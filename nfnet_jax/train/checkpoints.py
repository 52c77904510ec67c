"""Orbax checkpoints of the train state in WORKDIR, and a SIGTERM flag for clean preemption.

Orbax writes each checkpoint into a temporary directory and renames it only once complete, so a
process killed during a save leaves the previous checkpoint intact; the half-written temporary
directory is removed the next time the manager opens WORKDIR. With async_save the write runs in a
background thread while training goes on; orbax waits for it before starting the next save, so at
most one save is in flight.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nfnet_jax import paths
from nfnet_jax.train.state import TrainState


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints; a local workdir is made absolute, a URL (gs://...) is kept as it is."""
  return paths.join(paths.absolute(workdir), 'checkpoints')


class Checkpointer:
  """Saves and restores {state: TrainState, config: dict} every so often, keeping the last few."""

  def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False,
               async_save: bool = False):
    self._manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save and not read_only))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, config: dict, *, wait: bool = True) -> None:
    """Saves a host copy of `state` (unreplicated) under its step; every process must call it.

    wait=False (with async_save) returns once the previous save has finished and this one has
    started; the copy of `state` it writes is its own, so training may go on at once.
    """
    state = jax.device_get(state)
    step = int(state.step)
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config)))
    if wait:
      self.wait()

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is complete on disk."""
    self._manager.wait_until_finished()

  def saving(self) -> bool:
    """Whether a save is still being written."""
    return self._manager.is_saving_in_progress()

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """Restores the checkpoint at `step` (default: the latest) into the structure of `target`."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self._manager.directory}.')
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                            if not isinstance(x, jax.ShapeDtypeStruct) else x, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore()))
    state = jax.tree.map(np.asarray, restored['state'])
    return TrainState(*state), restored['config']

  def restore_config(self, step: int | None = None) -> dict:
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self._manager.directory}.')
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore_raw(self, step: int | None = None) -> dict:
    """Restores the latest (or `step`'s) state as plain nested dicts, without knowing the model."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self._manager.directory}.')
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored['state']

  def close(self) -> None:
    self._manager.close()


class TerminationFlag:
  """Context manager: SIGTERM sets `.requested` instead of killing the process mid-step."""

  def __init__(self):
    self.requested = False
    self._previous: Any = None

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self) -> 'TerminationFlag':
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread: leave signal handling alone
      self._previous = None
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def export(workdir: str, out: str, *, ema: bool = False, step: int | None = None) -> int:
  """Writes a run's params (or EMA params) as a flat npz for `nfnet_jax.pretrained.load`; returns the step."""
  from nfnet_jax import pretrained  # pylint: disable=import-outside-toplevel
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}; train first.')
    state = checkpointer.restore_raw(step)
  finally:
    checkpointer.close()
  params = state['ema_params' if ema else 'params']
  pretrained.save(out, jax.tree.map(np.asarray, params))
  return int(np.asarray(state['step']))
