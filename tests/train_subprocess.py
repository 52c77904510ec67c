"""Runs scripts/train.py (and the other scripts) as subprocesses on digits, as a user would.

Every run uses one config (quickstart's tiny NF-ResNet with MixUp/CutMix and stochastic depth, so
per-device randomness is exercised), built from one override dict. The subprocesses share the test
session's persistent XLA cache (tests/conftest.py), so the same config compiles only once.
"""

import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nfnet_jax.train import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS = 24
OVERRIDES = {
    'batch_size': 32, 'total_steps': TOTAL_STEPS, 'checkpoint_every_steps': 4, 'keep_checkpoints': 2,
    'log_every_steps': 4, 'eval_every_steps': 0, 'augment': 'cutmix_mixup', 'ema_decay': 0.9,
    'optimizer.lr': 0.1, 'optimizer.warmup_epochs': 0.1, 'model_kwargs.stochdepth_rate': 0.2,
}
def cli_flags(workdir, **extra):
  flags = ['--config=configs/quickstart.py', f'--workdir={workdir}']
  flags += [f'--config.{k}={v}' for k, v in {**OVERRIDES, **extra}.items()]
  return flags


def script_env(devices=4):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return env


def launch(workdir, log_path, *, devices=4, extra_args=(), prefix=(), **overrides):
  log = open(log_path, 'w')
  return subprocess.Popen([*prefix, sys.executable, 'scripts/train.py', *cli_flags(workdir, **overrides),
                           *extra_args], cwd=REPO, env=script_env(devices), stdout=log,
                          stderr=subprocess.STDOUT)


def run_script(script, *args, timeout=300, prefix=()):
  """Runs scripts/SCRIPT with args; returns (exit code, stdout + stderr)."""
  proc = subprocess.run([*prefix, sys.executable, f'scripts/{script}', *map(str, args)], cwd=REPO,
                        env=script_env(), capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr


def finished_steps(workdir):
  d = checkpoints.checkpoint_dir(str(workdir))
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for_checkpoint(proc, workdir, after, log_path, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [s for s in finished_steps(workdir) if s > after]
    if steps:
      return steps[-1]
    if proc.poll() is not None:
      pytest.fail(f'training exited early ({proc.returncode}):\n{pathlib.Path(log_path).read_text()}')
    time.sleep(0.05)
  proc.kill()
  pytest.fail(f'no checkpoint after step {after} within {timeout}s:\n{pathlib.Path(log_path).read_text()}')


def final_params(workdir, step=None):
  ckpt = checkpoints.Checkpointer(str(workdir), read_only=True)
  state = ckpt.restore_raw(step)
  ckpt.close()
  return state


def assert_same_params(a, b, rtol=1e-5, atol=1e-6):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    np.testing.assert_allclose(np.asarray(x), np.asarray(flat_b[path]), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def run_to_end(workdir, log, *, timeout=900, **kwargs):
  proc = launch(workdir, log, **kwargs)
  assert proc.wait(timeout=timeout) == 0, pathlib.Path(log).read_text()
  return pathlib.Path(log).read_text()
