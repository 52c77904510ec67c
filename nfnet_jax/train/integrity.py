"""Checkpoint integrity: a digest of every array recorded at save and checked at restore.

A checkpoint's manifest holds one xxh3-128 digest per array (with its dtype and shape), the training
loss at that step and the params' global norm. A restored state whose arrays do not match it, or
whose params are not finite, is damaged; so is one that orbax cannot read. Damaged checkpoints are
moved aside into WORKDIR/set_aside/, never deleted.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import sys
from typing import Any, Mapping

import jax
import numpy as np

from nfnet_jax import extras

xxhash = extras.require('xxhash', 'checkpoint digests (nfnet_jax.train)')

FORMAT = 1
SET_ASIDE = 'set_aside'


class NonFiniteParamsError(FloatingPointError):
  """Params (or EMA params) hold NaN or Inf; such a state is never saved."""


class DamagedCheckpointError(RuntimeError):
  """No intact checkpoint could be restored; the message names each one and why."""


def _key(path) -> str:
  parts = []
  for k in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def digest(x: Any) -> str:
  a = np.ascontiguousarray(np.asarray(x))
  return f'{a.dtype.str}{list(a.shape)}:{xxhash.xxh3_128_hexdigest(a.view(np.uint8).data if a.size else b"")}'


def tree_digests(tree: Any) -> dict[str, str]:
  return {_key(p): digest(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def nonfinite(tree: Any) -> list[str]:
  """Paths of floating arrays in `tree` holding NaN or Inf."""
  return [_key(p) for p, x in jax.tree_util.tree_leaves_with_path(tree)
          if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.all(np.isfinite(x))]


def _names(paths: list[str], limit: int = 3) -> str:
  more = f' and {len(paths) - limit} more' if len(paths) > limit else ''
  return ', '.join(paths[:limit]) + more


def check_finite(state: Mapping[str, Any], what: str) -> None:
  """Raises NonFiniteParamsError if params or EMA params of `state` hold NaN/Inf."""
  bad = [f'{k}/{p}' for k in ('params', 'ema_params') for p in nonfinite(state.get(k, {}))]
  if bad:
    raise NonFiniteParamsError(f'{what}: {len(bad)} arrays hold NaN or Inf ({_names(bad)}).')


def manifest(state: Mapping[str, Any], train_loss: float | None = None) -> dict:
  """What a checkpoint records about `state` (a dict of TrainState's fields)."""
  flat = [np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(state['params'])]
  norm = float(np.sqrt(sum(float(np.vdot(x, x)) for x in flat)))
  return {'format': FORMAT, 'digests': tree_digests(state), 'train_loss': train_loss,
          'param_norm': norm}


def problem(state: Mapping[str, Any], recorded: Mapping[str, Any] | None) -> str | None:
  """Why a restored state (dict of TrainState's fields) is damaged, or None if it is intact."""
  if recorded is not None:
    want, got = recorded['digests'], tree_digests(state)
    differ = sorted(k for k in want if got.get(k) != want[k])
    missing = sorted(k for k in want if k not in got)
    if differ:
      return (f'{len(differ)} of {len(want)} arrays differ from the digests recorded at save '
              f'({_names(differ)}){"; missing: " + _names(missing) if missing else ""}')
  try:
    check_finite(state, 'its params are not finite')
  except NonFiniteParamsError as e:
    return str(e)
  return None


_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'(?:Failed writing|Failed to open|local file|file): "([^"]+)"')


def _chain(exc: BaseException):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def os_error(exc: BaseException) -> OSError | None:
  """The OSError at the root of an orbax/tensorstore failure (ENOSPC, EACCES, ...), if any."""
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno:
      return e
    match = _OS_CODE.search(str(e))
    if match:
      code = int(match.group(1))
      path = _QUOTED_PATH.search(str(e))
      return OSError(code, os.strerror(code), path.group(1) if path else None)
  return None


def root_cause(exc: BaseException) -> str:
  """One line saying why orbax failed, without the asyncio/tensorstore frames around it."""
  err = os_error(exc)
  if err is not None:
    return f'{err.strerror}' + (f' ({err.filename})' if err.filename else '')
  text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
  if re.match(r'(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|FAILED_PRECONDITION|INVALID_ARGUMENT):', text):
    text = f'a data file is truncated, missing or damaged ({text[:300]})'
  return text[:400]


def set_aside(step_dir: str, workdir: str, why: str, tag: str) -> str:
  """Moves a checkpoint directory to WORKDIR/set_aside/STEP.TAG (never deleting); returns where."""
  root = os.path.join(os.path.abspath(workdir), SET_ASIDE)
  os.makedirs(root, exist_ok=True)
  dest = os.path.join(root, f'{os.path.basename(step_dir)}.{tag}')
  if os.path.exists(dest):
    dest += '.' + datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
  shutil.move(step_dir, dest)
  with open(os.path.join(dest, 'WHY.txt'), 'w') as f:
    f.write(why + '\n')
  return dest


class _DropOrbaxThreadErrors(logging.Filter):
  """Drops orbax's logged tracebacks of a failed background write; the failure is raised anyway."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (('orbax' in record.pathname and 'raised an exception' in message)
                or (message.startswith('Future exception was never retrieved') and 'OCDBT' in message))


def quiet_closed_event_loop() -> None:
  """Drops the noise around a failed orbax read or write, which Checkpointer reports as one line.

  Once one read or write of a checkpoint fails, orbax closes its asyncio loop while tensorstore still
  completes the other operations; each completion reports the closed loop as an unraisable
  exception (dozens of tracebacks that bury the real error), and orbax logs each failed thread's
  traceback. Every other unraisable error and log record is reported as before.
  """
  for logger in (logging.getLogger('absl'), logging.getLogger('asyncio')):
    if not any(isinstance(f, _DropOrbaxThreadErrors) for f in logger.filters):
      logger.addFilter(_DropOrbaxThreadErrors())
  previous = sys.unraisablehook
  if getattr(previous, '_drops_closed_loop', False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
      return
    previous(unraisable)

  hook._drops_closed_loop = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def restore_intact(restore_one, steps: list[int], *, directory: str, set_aside_fn=None,
                   agree=None, log=print, explicit: bool = False):
  """Restores the newest intact of `steps` (newest first) with `restore_one(step) -> (state, manifest, x)`.

  `state` is a dict of TrainState's fields. A damaged step is named with the reason and passed to
  `set_aside_fn(step, why) -> str` (None: left in place). `agree(ok) -> bool` makes all processes
  accept a step together. With `explicit`, only steps[0] is tried. Returns (step, x).
  """
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {directory}.')
  skipped = []
  for step in steps[:1] if explicit else steps:
    try:
      state, recorded, extra = restore_one(step)
      why = problem(state, recorded)
    except Exception as e:  # pylint: disable=broad-except
      why, extra = root_cause(e), None
    if (agree(why is None) if agree else why is None):
      if skipped:
        log(f'Using the checkpoint at step {step}.')
      return step, extra
    why = why or 'another process could not restore it'
    if explicit:
      raise DamagedCheckpointError(f'the checkpoint at step {step} in {directory} is damaged: {why}.')
    where = set_aside_fn(step, why) if set_aside_fn else None
    log(f'Skipping the damaged checkpoint at step {step} in {directory}: {why}; '
        + (f'moved to {where}.' if where else 'left in place.'))
    skipped.append(step)
  raise DamagedCheckpointError(
      f'every checkpoint in {directory} is damaged (steps {", ".join(map(str, skipped))}; see above'
      + (f', moved to {os.path.join(os.path.dirname(directory), SET_ASIDE)}' if set_aside_fn else '')
      + '); start a new run in another --workdir or restore a backup.')
