"""One door for every user path: local files, gs:// buckets and other URLs.

Workdirs, data dirs, weights and outputs may be local paths or URLs. Local paths use Python's own
file functions (so the core install needs nothing more); the schemes etils.epath knows (gs://,
s3://, az://, hf://; what orbax and tfds use) go through epath; any other scheme (TensorFlow's
ram://, hdfs://, ...) goes through tf.io.gfile. Each is imported only when a path needs it. Paths stay
strings; a URL is never made absolute, expanded or normalised, so 'gs://b/run' stays 'gs://b/run'.
Writes are atomic: a local file is written beside its target and renamed over it; a bucket object
appears whole when its upload completes.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import re
import shutil
import uuid
from typing import IO

_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')
EPATH_SCHEMES = ('gs', 's3', 'az', 'hf')


def scheme(path: str) -> str | None:
  """'gs' for 'gs://b/x', None for a local path."""
  m = _SCHEME.match(os.fspath(path))
  return m.group(1) if m else None


def is_url(path: str) -> bool:
  return scheme(path) is not None


def _gfile():
  from nfnet_jax import extras  # pylint: disable=import-outside-toplevel
  return extras.require('tensorflow', "paths of TensorFlow's filesystems (ram://, hdfs://, ...)").io.gfile


def _uses_gfile(path: str) -> bool:
  s = scheme(path)
  return s is not None and s not in EPATH_SCHEMES


def _epath(path: str):
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(path)


def expand(path: str) -> str:
  """A local path with '~' expanded; a URL unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.expanduser(path)


def absolute(path: str) -> str:
  """A local path made absolute ('~' expanded); a URL unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  """Joins with '/' for URLs (whatever the OS), os.path.join for local paths."""
  path = os.fspath(path)
  return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
  path = os.fspath(path)
  if not is_url(path):
    return os.path.dirname(path)
  head = posixpath.dirname(path.rstrip('/'))
  return head if is_url(head) else path  # 'gs://b' is its own parent


def basename(path: str) -> str:
  path = os.fspath(path)
  return posixpath.basename(path.rstrip('/')) if is_url(path) else os.path.basename(path)


def exists(path: str) -> bool:
  path = expand(path)
  if not is_url(path):
    return os.path.exists(path)
  return _gfile().exists(path) if _uses_gfile(path) else _epath(path).exists()


def isdir(path: str) -> bool:
  path = expand(path)
  if not is_url(path):
    return os.path.isdir(path)
  return _gfile().isdir(path) if _uses_gfile(path) else _epath(path).is_dir()


def makedirs(path: str) -> None:
  """Creates `path` and its parents if missing (a no-op on bucket URLs, which have no folders)."""
  path = expand(path)
  if _uses_gfile(path):
    _gfile().makedirs(path)
  elif not is_url(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  path = expand(path)
  if not is_url(path):
    return sorted(os.listdir(path))
  if _uses_gfile(path):
    return sorted(name.rstrip('/') for name in _gfile().listdir(path))
  return sorted(p.name for p in _epath(path).iterdir())


def open_file(path: str, mode: str = 'r') -> IO:
  """A file object for reading ('r', 'rb') or writing ('w', 'wb'; not atomic: see write_bytes)."""
  path = expand(path)
  if not is_url(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  return _gfile().GFile(path, mode) if _uses_gfile(path) else _epath(path).open(mode)


def read_bytes(path: str) -> bytes:
  path = expand(path)
  if is_url(path) and not exists(path):
    raise FileNotFoundError(errno.ENOENT, 'No such file or directory', path)
  with open_file(path, 'rb') as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode('utf-8')


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically, creating its folder; readers see the old or the new file."""
  path = expand(path)
  makedirs(dirname(path) or '.')
  if is_url(path) and not _uses_gfile(path):
    with _epath(path).open('wb') as f:   # an object upload is atomic
      f.write(data)
    return
  tmp = join(dirname(path) or '.', f'.tmp-{uuid.uuid4().hex}-{basename(path)}')
  try:
    with open_file(tmp, 'wb') as f:
      f.write(data)
    if _uses_gfile(path):
      _gfile().rename(tmp, path, overwrite=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    if exists(tmp):
      remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def append_text(path: str, text: str) -> None:
  """Appends to a local file; rewrites a URL's object whole (buckets cannot append)."""
  path = expand(path)
  if not is_url(path):
    makedirs(dirname(path) or '.')
    with open(path, 'a', encoding='utf-8') as f:
      f.write(text)
    return
  write_text(path, (read_text(path) if exists(path) else '') + text)


def remove(path: str) -> None:
  path = expand(path)
  if not is_url(path):
    os.remove(path)
  elif _uses_gfile(path):
    _gfile().remove(path)
  else:
    _epath(path).unlink()


def move_tree(src: str, dst: str) -> None:
  """Moves a file or folder: a rename on local disk; a copy, then a delete, of each object on a bucket."""
  src, dst = expand(src), expand(dst)
  if not is_url(src):
    shutil.move(src, dst)
    return
  if not isdir(src):
    write_bytes(dst, read_bytes(src))
    remove(src)
    return
  makedirs(dst)
  for name in listdir(src):
    move_tree(join(src, name), join(dst, name))
  if _uses_gfile(src):
    if _gfile().exists(src):
      _gfile().rmtree(src)
  elif _epath(src).exists():
    _epath(src).rmtree()


def write_figure(path: str, fig, **savefig_kwargs) -> None:
  """Saves a matplotlib figure to `path` (format from its extension) atomically, then closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  fig.savefig(buffer, format=basename(path).rsplit('.', 1)[-1], **savefig_kwargs)
  plt.close(fig)
  write_bytes(path, buffer.getvalue())
