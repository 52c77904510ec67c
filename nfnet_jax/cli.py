"""How every script starts and fails.

It starts by keeping freed host memory in the process where asked (`nfnet_jax.host_memory`, before jax
starts).
It fails with one line saying what went wrong, the path and what to do; exit code != 0.

The full traceback goes to a file in the temp folder (named on the line for unexpected errors) and to
the console only with --verbose. `run(main)` replaces absl's `app.run(main)`; argparse scripts wrap
their work in `guard(fn, argv)` and add `--verbose` themselves.
"""

from __future__ import annotations

import difflib
import errno
import os
import pickle
import sys
import tempfile
import traceback
from typing import Callable, Sequence

VERBOSE_HELP = 'Print the full traceback of a failure.'

_OS_ADVICE = {
    errno.ENOSPC: ('no space left on the device', 'free some space (or write elsewhere) and run the '
                   'same command again'),
    errno.EDQUOT: ('disk quota exceeded', 'free some space (or write elsewhere) and run the same '
                   'command again'),
    errno.EACCES: ('permission denied', 'make it accessible to this user or choose another path'),
    errno.EPERM: ('operation not permitted', 'make it accessible to this user or choose another path'),
    errno.EROFS: ('read-only file system', 'choose a writable path'),
    errno.EISDIR: ('is a directory', 'give a file path (e.g. DIR/params.npz)'),
    errno.ENOTDIR: ('a part of the path is a file, not a directory', 'check the path'),
    errno.ENOENT: ('no such file or directory', 'check the path'),
}


def _os_error(exc: BaseException) -> OSError | None:
  if isinstance(exc, OSError) and exc.errno:
    return exc
  from nfnet_jax.train import integrity  # pylint: disable=import-outside-toplevel
  return integrity.os_error(exc)


def describe(exc: BaseException) -> tuple[str, int, bool]:
  """(one-line message, exit code, whether the traceback is worth pointing at) for `exc`."""
  err = _os_error(exc)
  if err is not None:
    what, todo = _OS_ADVICE.get(err.errno, (err.strerror or os.strerror(err.errno), 'check the path'))
    detail = (err.strerror or '').partition(': ')[2]   # context a library added after the cause
    path = f': {err.filename}' if err.filename else ''
    return f'{what}{path}{"; " + detail if detail else ""}; {todo}.', 1, False
  from nfnet_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  if isinstance(exc, (config_lib.ConfigError, ValueError, FileNotFoundError, KeyError)):
    return str(exc).strip("'\""), 2, False
  if isinstance(exc, pickle.UnpicklingError):   # e.g. pretrained.UnsafePickleError
    return str(exc), 2, False
  if isinstance(exc, (RuntimeError, FloatingPointError)) or type(exc).__module__.startswith('nfnet_jax'):
    return str(exc), 1, False
  first = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
  return f'{type(exc).__name__}: {first}'[:500], 1, True


def _save_traceback(exc: BaseException) -> str | None:
  name = os.path.splitext(os.path.basename(sys.argv[0] or 'nfnet_jax'))[0]
  path = os.path.join(tempfile.gettempdir(), f'nfnet_jax-{name}-{os.getpid()}.traceback.txt')
  try:
    with open(path, 'w') as f:
      traceback.print_exception(exc, file=f)
    return path
  except OSError:
    return None


def fail(exc: BaseException, *, verbose: bool) -> int:
  """Prints `exc` as one line (and the traceback if verbose); returns the exit code."""
  if isinstance(exc, KeyboardInterrupt):
    print('interrupted.', file=sys.stderr)
    return 130
  message, code, unexpected = describe(exc)
  saved = _save_traceback(exc)
  if verbose:
    traceback.print_exception(exc, file=sys.stderr)
  elif unexpected and saved:
    message += f' (full traceback: {saved}, or run with --verbose)'
  print(f'error: {message}', file=sys.stderr, flush=True)
  return code


def _load_config(argv: Sequence[str]):
  """The config that --config=FILE[:ARG] in argv names (as config_flags loads it), or None."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(':')
  try:
    module_spec = importlib.util.spec_from_file_location('_nfnet_jax_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def _unknown_config_key(argv: Sequence[str]) -> str | None:
  """One line naming a --config.KEY override that the config lacks, with the closest valid key."""
  config = _load_config(argv)
  if config is None:
    return None
  valid = []
  def walk(node, prefix):
    for k in node.keys():
      valid.append(prefix + k)
      if hasattr(node[k], 'keys'):
        walk(node[k], f'{prefix}{k}.')
  walk(config, '')
  for arg in argv:
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].split('=', 1)[0]
      if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f'; did you mean --config.{close[0]}?' if close else '; see the config file for its keys.'
        return f'unknown config key --config.{key}{hint}'
  return None


def _start() -> None:
  from nfnet_jax import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory()


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run(main) with every failure, flag parsing included, reported as one line."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  _start()
  if 'verbose' not in flags.FLAGS:
    flags.DEFINE_bool('verbose', False, VERBOSE_HELP)
  started = []

  def wrapped(argv):
    started.append(True)
    return main(argv)

  try:
    app.run(wrapped)
  except SystemExit:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    verbose = flags.FLAGS['verbose'].value if started else '--verbose' in sys.argv
    if not started and isinstance(e, (AttributeError, KeyError)):
      unknown = _unknown_config_key(sys.argv)
      if unknown:
        if verbose:
          traceback.print_exception(e, file=sys.stderr)
        print(f'error: {unknown}', file=sys.stderr)
        sys.exit(2)
    sys.exit(fail(e, verbose=verbose))


def guard(fn: Callable[[], int | None], argv: Sequence[str] | None = None) -> int:
  """Runs fn() for an argparse script; returns its exit code, or fail()'s for an exception."""
  _start()
  try:
    code = fn()
    return code if isinstance(code, int) else 0
  except SystemExit:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    return fail(e, verbose='--verbose' in (sys.argv if argv is None else argv))
