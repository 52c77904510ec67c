"""Host memory for XLA:CPU: keep freed memory in the process instead of mapping it anew every step.

XLA:CPU allocates each execution's temporary buffer (308 MiB for the NFNet-F0 step at batch 8,
128 px) and its outputs with malloc from a worker thread. glibc serves requests above 64 MiB in a
thread's arena with a fresh mmap and unmaps them on free, so every step page-faults the whole buffer
in again and the kernel zeroes it: on a 2-core VM that was 79k faults and 0.1–1.7 s of system time
per F0 step (1.0–1.9 s steps). `keep_freed_memory` tells glibc to serve every thread from one heap
without mmap and never to trim it: the process's resident memory then stays at its peak (4.0 GB
over 70 F0 steps, 4.6 GB over 20 with glibc's defaults). One arena costs small-tensor work, though: the quickstart trained
in 37 s against 29 s without it, so it is on where asked: ``NFNET_JAX_KEEP_FREED_MEMORY=1``, or
by default for `scripts/benchmark.py` (``=0`` turns it off there). It must run before jax starts
its backend (its threads pick their arenas then); every script calls it through `nfnet_jax.cli`.
Only on glibc and only where jax will run on the CPU (no accelerator plugin).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

import jax

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

_note = None


def _accelerator() -> str | None:
  """The accelerator jax will pick instead of the CPU, as far as can be told before it starts."""
  platforms = jax.config.jax_platforms
  if platforms:
    first = platforms.split(",")[0].strip()
    return None if first == "cpu" else first
  plugins = sorted(e.name for e in importlib.metadata.entry_points(group="jax_plugins"))
  if importlib.util.find_spec("jax_plugins") is not None:
    import jax_plugins  # pylint: disable=import-outside-toplevel,import-error
    import pkgutil  # pylint: disable=import-outside-toplevel
    plugins += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  if importlib.util.find_spec("libtpu") is not None:
    plugins.append("libtpu")
  return ", ".join(sorted(set(plugins))) or None


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  return getattr(xla_bridge, "backends_are_initialized", lambda: False)()


def keep_freed_memory(default: bool = False) -> str:
  """Applies the policy (once) if asked (``default``, unless the environment says); returns `describe()`."""
  global _note
  if _note is not None:
    return _note
  asked = os.environ.get("NFNET_JAX_KEEP_FREED_MEMORY", "1" if default else "0") != "0"
  if not asked:
    _note = ""  # glibc's defaults, nothing to report
  elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    _note = "host memory: left to malloc (not glibc)"
  elif _backend_started():
    return "host memory: left to malloc (jax had started its backend; call keep_freed_memory() first)"
  elif (accelerator := _accelerator()) is not None:
    _note = f"host memory: left to malloc (jax will run on {accelerator})"
  else:
    libc = ctypes.CDLL(None)
    if all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS):
      _note = "host memory: freed memory kept in the process (glibc: one arena, no mmap, no trim)"
    else:
      _note = "host memory: left to malloc (glibc refused mallopt)"
  return _note


def describe() -> str:
  """What `keep_freed_memory` did, for the logs ('' when it was not asked to)."""
  return _note or ""
