"""C++ XLA FFI handlers for the CPU backend, compiled on first use and cached.

A library is built from one source file in this package against jaxlib's FFI headers (and the
libraries it links), cached under ``NFNET_JAX_CACHE`` (default ``~/.cache/nfnet_jax``), keyed by
source, compile command and jax version, then loaded and its handlers registered. Where no
compiler or library is found, `load` returns why instead; callers keep a pure-XLA path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Sequence

import jax

PACKAGE = pathlib.Path(__file__).parent


def cache_dir() -> pathlib.Path:
  root = os.environ.get("NFNET_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nfnet_jax")
  return pathlib.Path(root)


def compile_command(source: str, out: str, flags: Sequence[str] = (), libs: Sequence[str] = ()) -> list[str]:
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or "c++"
  return ([cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(), *flags,
           str(PACKAGE / source), "-o", out] + [f"-l{lib}" for lib in libs])


@functools.cache
def load(source: str, targets: tuple[str, ...], flags: tuple[str, ...] = (), libs: tuple[str, ...] = (),
         what: str = "", needs: str = "g++") -> tuple[ctypes.CDLL | None, str]:
  """(the library built from `source` with `targets` registered, '') or (None, why not).

  The reason says what failed to build (`what`, default the source) and what to install (`needs`).
  """
  if jax.default_backend() != "cpu":
    return None, f"not used on {jax.default_backend()}"
  # Keyed by what the library is built from (not by the compiler's name: any one will do).
  key = hashlib.sha256((PACKAGE / source).read_bytes()
                       + " ".join(compile_command(source, "", flags, libs)[1:]).encode()
                       + jax.__version__.encode()).hexdigest()[:16]
  path = cache_dir() / f"{pathlib.Path(source).stem}-{key}.so"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
      proc = subprocess.run(compile_command(source, tmp, flags, libs), capture_output=True, text=True)
    except OSError as e:  # no compiler
      os.unlink(tmp)
      return None, f"no C++ compiler ({e.strerror}); install {needs}"
    if proc.returncode:
      os.unlink(tmp)
      first = next((l for l in proc.stderr.splitlines() if "error" in l), proc.stderr.strip()[:200])
      return None, f"could not build {what or source} ({first.strip()}); install {needs}"
    os.replace(tmp, path)  # atomic: concurrent first uses see a whole library or none
  try:
    lib = ctypes.CDLL(str(path))
  except OSError as e:
    return None, f"could not load {path.name}: {e}"
  for symbol in targets:
    jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib, ""
