"""One trainer per workdir: an exclusive lock on WORKDIR/lock that the kernel drops when its holder dies.

The lock is an flock on WORKDIR/lock; the file says who holds it (host, pid, since when). A second
trainer is refused at once with that line. A holder that died (even by SIGKILL) leaves its line but
no flock, so the next trainer takes the lock over and says so. A multi-host run holds one lock:
process 0 takes it and every process learns the outcome, so all of them start or all stop.
A bucket has no flock: for a workdir that is a URL (gs://...), the lock is a local file named by
the URL's hash in the temp dir, so it refuses a second trainer on the same host only.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from nfnet_jax import paths


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir."""


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
          f"since {holder.get('since', '?')}")


class WorkdirLock:
  """An exclusive, non-blocking lock on WORKDIR/lock; `acquire` returns a notice or None."""

  def __init__(self, workdir: str):
    self.workdir = paths.absolute(workdir)
    if paths.is_url(self.workdir):
      digest = hashlib.sha256(self.workdir.encode()).hexdigest()[:24]
      self.path = os.path.join(tempfile.gettempdir(), 'nfnet_jax_locks', digest)
    else:
      self.path = os.path.join(self.workdir, 'lock')
    self._fd: int | None = None

  def _read(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode('utf-8', 'replace').strip()
    try:
      return json.loads(text) if text else {}
    except json.JSONDecodeError:
      return {'host': '?', 'pid': '?', 'since': f'? (unreadable lock file: {text[:40]!r})'}

  def acquire(self) -> str | None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = {}
      for _ in range(50):  # the holder writes its line right after taking the flock
        holder = self._read(fd)
        if holder:
          break
        time.sleep(0.02)
      os.close(fd)
      raise WorkdirLockedError(
          f'{self.workdir} is in use by another trainer ({_describe(holder)}); wait for it to '
          'finish or stop it, or give another --workdir.') from None
    previous = self._read(fd)
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'since': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + '\n').encode(), 0)
    os.fsync(fd)
    self._fd = fd
    if previous:
      return (f'Took over the lock of {self.workdir} from a trainer that is gone '
              f'({_describe(previous)}).')
    return None

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)   # empty: free; the file stays so that every trainer locks one inode
      os.close(self._fd)          # closing drops the flock
      self._fd = None


@contextlib.contextmanager
def hold(workdir: str, log: Callable[[str], None] = print) -> Iterator[None]:
  """Holds the workdir for one run; process 0 locks and all processes share the outcome."""
  lock, error = None, None
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir)
    try:
      notice = lock.acquire()
      if notice:
        log(notice)
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if refused and error is None:
      error = WorkdirLockedError(f'{paths.absolute(workdir)} is in use by another trainer '
                                 '(see the log of process 0).')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
