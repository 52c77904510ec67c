"""Orbax checkpoints of the train state in WORKDIR, and a SIGTERM flag for clean preemption.

Orbax writes each checkpoint into a temporary directory and renames it only once complete, so a
process killed during a save leaves the previous checkpoint intact; the half-written temporary
directory is removed the next time the manager opens WORKDIR. With async_save the write runs in a
background thread while training goes on; orbax waits for it before starting the next save, so at
most one save is in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from nfnet_jax import extras
from nfnet_jax import paths
from nfnet_jax.train import integrity
from nfnet_jax.train.state import TrainState

ocp = extras.require('orbax.checkpoint', 'checkpoints (nfnet_jax.train)')


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints; a local workdir is made absolute, a URL (gs://...) is kept as it is."""
  return paths.join(paths.absolute(workdir), 'checkpoints')


@contextlib.contextmanager
def _without_read_only_notice():
  """Drops orbax's "Given directory is read only" warning, which every read-only manager logs:
  read-only is what evaluation and export ask for. Every other log record passes."""
  notice = lambda record: not str(record.msg).startswith('Given directory is read only')
  absl_logger = logging.getLogger('absl')
  absl_logger.addFilter(notice)
  try:
    yield
  finally:
    absl_logger.removeFilter(notice)


class Checkpointer:
  """Saves and restores {state: TrainState, config: dict} every so often, keeping the last few.

  Each save also records a manifest (integrity.manifest: a digest of every array); restoring without
  a step takes the newest checkpoint that reads back intact, naming the ones it skips and (unless
  read-only) moving them to WORKDIR/set_aside/.
  With async_save the write runs in a background thread while training goes on.
  """

  def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False,
               keep_period: int | None = None, async_save: bool = False,
               log: Callable[[str], None] | None = None):
    integrity.quiet_closed_event_loop()
    self._workdir, self._read_only = paths.absolute(workdir), read_only
    self._log = log or (lambda m: print(m, file=sys.stderr, flush=True) if jax.process_index() == 0
                        else None)
    self._pending_step: int | None = None
    with _without_read_only_notice():
      self._manager = ocp.CheckpointManager(
          checkpoint_dir(workdir),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
              keep_period=keep_period, create=not read_only, read_only=read_only,
              cleanup_tmp_directories=not read_only,
              enable_async_checkpointing=async_save and not read_only))
    if not read_only and jax.process_index() == 0:  # an unwritable folder fails now, not at a save
      probe = paths.join(checkpoint_dir(workdir), f'.write_test-{os.getpid()}')
      paths.write_bytes(probe, b'')
      paths.remove(probe)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _step_dir(self, step: int) -> str:
    return paths.join(checkpoint_dir(self._workdir), str(step))

  def save(self, state: TrainState, config: dict, *, train_loss: float | None = None,
           wait: bool = True) -> None:
    """Saves a host copy of `state` (unreplicated) under its step; every process must call it.

    Raises integrity.NonFiniteParamsError (saving nothing) if params are not finite, and an
    OSError naming the cause and path (e.g. ENOSPC) if the write fails; earlier checkpoints stay.
    wait=False (with async_save) returns once the previous save has finished and this one has
    started; the host copy it writes is its own, so training may go on at once.
    """
    state = jax.device_get(state)
    step = int(state.step)
    if step not in self._manager.all_steps():
      fields = state._asdict()
      integrity.check_finite(fields, f'not saving the checkpoint at step {step}')
      manifest = integrity.manifest(fields, train_loss)
      with self._reporting_os_errors():
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
            manifest=ocp.args.JsonSave(manifest)))
      self._pending_step = step
    if wait:
      self.wait()

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is complete on disk."""
    with self._reporting_os_errors():
      self._manager.wait_until_finished()
    self._pending_step = None

  @contextlib.contextmanager
  def _reporting_os_errors(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      err = integrity.os_error(e)
      if err is None:
        raise
      step = self._pending_step
      what = f'saving the checkpoint at step {step}' if step is not None else 'saving a checkpoint'
      raise OSError(err.errno, f'{err.strerror}: {what} failed; the checkpoints saved before are '
                    'intact', err.filename or checkpoint_dir(self._workdir)) from e

  def _restore_one(self, step: int, abstract):
    items = dict(state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore())
    has_manifest = paths.isdir(paths.join(self._step_dir(step), 'manifest'))
    if has_manifest:
      items['manifest'] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = restored['state']
    fields = (dict(zip(TrainState._fields, state)) if abstract is not None
              else {k: state[k] for k in TrainState._fields})
    return fields, restored['manifest'] if has_manifest else None, (fields, restored['config'])

  def _set_aside(self, step: int, why: str) -> str | None:
    if self._read_only:
      return None
    where = None
    if jax.process_index() == 0:
      where = integrity.set_aside(self._step_dir(step), self._workdir, why, 'damaged')
    self._sync('set_aside')
    self._manager.reload()
    return where

  @staticmethod
  def _sync(name: str) -> None:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'nfnet_jax checkpoints: {name}')

  @staticmethod
  def _agree(ok: bool) -> bool:
    if jax.process_count() == 1:
      return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))

  def restore_intact(self, abstract=None, step: int | None = None) -> tuple[int, dict, dict]:
    """(step, state fields, config) of `step`, or of the newest intact checkpoint if None."""
    steps = [step] if step is not None else self.all_steps()[::-1]
    used, (fields, config) = integrity.restore_intact(
        lambda s: self._restore_one(s, abstract), steps, directory=checkpoint_dir(self._workdir),
        set_aside_fn=self._set_aside, agree=self._agree, log=self._log, explicit=step is not None)
    return used, fields, config

  def saving(self) -> bool:
    """Whether a save is still being written."""
    return self._manager.is_saving_in_progress()

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """Restores `step` (default: the newest intact checkpoint) into the structure of `target`."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                            if not isinstance(x, jax.ShapeDtypeStruct) else x, target)
    _, fields, config = self.restore_intact(abstract, step)
    return TrainState(**jax.tree.map(np.asarray, fields)), config

  def restore_config(self, step: int | None = None) -> dict:
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self._manager.directory}.')
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore_raw(self, step: int | None = None) -> dict:
    """Restores `step`'s (default: the newest intact) state as plain nested dicts, without the model."""
    return self.restore_intact(None, step)[1]

  def kept(self) -> list[tuple[int, dict | None]]:
    """(step, manifest or None for checkpoints saved before manifests) of every kept checkpoint."""
    result = []
    for step in self.all_steps():
      manifest = None
      if paths.isdir(paths.join(self._step_dir(step), 'manifest')):
        try:
          manifest = self._manager.restore(step, args=ocp.args.Composite(
              manifest=ocp.args.JsonRestore()))['manifest']
        except Exception:  # pylint: disable=broad-except
          manifest = None
      result.append((step, manifest))
    return result

  def rewind(self, step: int) -> list[str]:
    """Makes `step` the latest checkpoint: later ones move to WORKDIR/set_aside/; returns where."""
    steps = self.all_steps()
    if step not in steps:
      raise ValueError(f'--resume_step={step} is not a checkpoint kept in '
                       f'{checkpoint_dir(self._workdir)}; kept steps: '
                       f'{", ".join(map(str, steps)) or "none"}.')
    moved = []
    if jax.process_index() == 0:
      moved = [integrity.set_aside(self._step_dir(s), self._workdir,
                                   f'set aside by --resume_step={step}', f'after_resume_step_{step}')
               for s in steps if s > step]
    self._sync('rewind')
    self._manager.reload()
    return moved

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
  pretrained.check_writable(out)   # before reading anything
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
