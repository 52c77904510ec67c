"""`host_memory.keep_freed_memory`: XLA:CPU's big buffers are reused, not mapped and faulted in anew."""

import json
import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from nfnet_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='the policy is glibc-only')

# A fresh process: the policy (or not), then a jitted op whose 96 MiB output (above glibc's 64 MiB
# arena heaps and its 32 MiB mmap threshold) is freed after each call; page faults of the last 10 calls.
_PROGRAM = '''
import json, resource, sys, time
from nfnet_jax import host_memory
note = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((24 * 2**20,), jnp.float32)
double = jax.jit(lambda x: x * 2)
def call():
  double(x).block_until_ready()
  time.sleep(0.02)   # jax frees the dropped output on its own threads: let it, before the next call
for _ in range(12):   # the heap grows to what the calls' pattern needs, then stays
  call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  call()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"note": note, "faults": faults}))
'''
_PAGES = 96 * 2**20 // 4096   # pages one output spans


def _run(**env):
  done = subprocess.run([sys.executable, '-c', _PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu', **env})
  assert done.returncode == 0, done.stderr
  return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
  kept = _run(NFNET_JAX_KEEP_FREED_MEMORY='1')
  assert kept['note'] == 'host memory: freed memory kept in the process (glibc: one arena, no mmap, no trim)'
  left = _run(NFNET_JAX_KEEP_FREED_MEMORY='0')
  assert left['note'] == ''
  assert _run()['note'] == ''   # off unless asked (scripts/benchmark.py asks)
  assert left['faults'] > 8 * _PAGES   # each of the 10 outputs mapped and faulted in anew
  assert kept['faults'] < 3 * _PAGES   # freed blocks reused (at most a late growth or two under load)


def test_it_is_left_alone_for_an_accelerator():
  done = subprocess.run([sys.executable, '-c', 'from nfnet_jax import host_memory; '
                         'print(host_memory.keep_freed_memory())'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cuda',
                                          'NFNET_JAX_KEEP_FREED_MEMORY': '1'})
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() in ('host memory: left to malloc (jax will run on cuda)',
                                 'host memory: left to malloc (not glibc)')


@glibc
def test_it_is_too_late_once_jax_runs(monkeypatch):
  jnp.ones(2).block_until_ready()   # jax's backend (and its threads) started
  monkeypatch.setattr(host_memory, '_note', None)
  assert 'jax had started its backend' in host_memory.keep_freed_memory(default=True)
  assert host_memory.describe() == ''
