"""End-to-end training on digits: outputs, resume after SIGTERM and SIGKILL, multi-process equality, NaN stop.

Every run is a subprocess of scripts/train.py with the same config (quickstart's tiny NF-ResNet with
MixUp/CutMix and stochastic depth, so per-device randomness is exercised), built from one override dict.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nfnet_jax.train import checkpoints
from nfnet_jax.train.writers import read_jsonl

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


CACHE_DIR = None  # set by the `xla_cache` fixture: a persistent XLA cache shared by the subprocesses


def launch(workdir, log_path, *, devices=4, extra_args=(), **overrides):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_COMPILATION_CACHE_DIR=str(CACHE_DIR), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  log = open(log_path, 'w')
  return subprocess.Popen([sys.executable, 'scripts/train.py', *cli_flags(workdir, **overrides),
                           *extra_args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


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


def final_params(workdir):
  ckpt = checkpoints.Checkpointer(str(workdir), read_only=True)
  state = ckpt.restore_raw()
  ckpt.close()
  return state


def assert_same_params(a, b, rtol=1e-5, atol=1e-6):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    np.testing.assert_allclose(np.asarray(x), np.asarray(flat_b[path]), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module', autouse=True)
def xla_cache(tmp_path_factory):
  """Subprocesses with the same config and device count then compile the train step only once."""
  global CACHE_DIR
  CACHE_DIR = tmp_path_factory.mktemp('xla_cache')
  yield CACHE_DIR


def run_to_end(workdir, log, **kwargs):
  proc = launch(workdir, log, **kwargs)
  assert proc.wait(timeout=400) == 0, pathlib.Path(log).read_text()
  return pathlib.Path(log).read_text()


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted run on 4 devices in one process, evaluated at the end."""
  workdir = tmp_path_factory.mktemp('reference')
  log = run_to_end(workdir / 'run', workdir / 'log.txt', eval_every_steps=TOTAL_STEPS)
  return workdir / 'run', final_params(workdir / 'run'), log


@pytest.mark.slow
def test_digits_end_to_end_writes_metrics_checkpoints_and_evaluates(reference):
  workdir, state, log = reference
  assert int(state['step']) == TOTAL_STEPS
  assert f'step {TOTAL_STEPS}/{TOTAL_STEPS}' in log and 'img/s' in log and 'ETA' in log
  rows = read_jsonl(workdir / 'metrics.jsonl')
  train_rows = [r for r in rows if 'train/loss' in r]
  assert [r['step'] for r in train_rows] == list(range(4, TOTAL_STEPS + 1, 4))
  for key in ('train/top1', 'train/top5', 'train/learning_rate', 'train/grad_norm',
              'train/clip_fraction', 'train/images_per_sec', 'train/eta_sec'):
    assert all(np.isfinite(r[key]) for r in train_rows), key
  assert 0 < train_rows[-1]['train/learning_rate'] < train_rows[1]['train/learning_rate']
  assert train_rows[-1]['train/loss'] < train_rows[0]['train/loss']
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  # keep_checkpoints=2: only the last two survive.
  assert finished_steps(workdir) == [TOTAL_STEPS - 4, TOTAL_STEPS]
  for name in ('eval/val/params', 'eval/val/ema_params'):
    (row,) = [r for r in rows if f'{name}/top1' in r]
    assert row['step'] == TOTAL_STEPS
    assert row[f'{name}/num_examples'] == 300          # digits' whole validation split
    assert row[f'{name}/top1'] > 0.3                    # chance is 0.1
    assert row[f'{name}/top1'] <= row[f'{name}/top5'] <= 1


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_ends_with_the_uninterrupted_params(reference, tmp_path):
  _, ref_state, _ = reference
  workdir, log = tmp_path / 'run', tmp_path / 'log.txt'
  # 1. SIGTERM after the first checkpoint: saves where it is and exits cleanly.
  proc = launch(workdir, log)
  wait_for_checkpoint(proc, workdir, 0, log)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, log.read_text()
  assert 'SIGTERM' in log.read_text()
  stopped = finished_steps(workdir)[-1]
  assert stopped < TOTAL_STEPS
  # 2. Resume, then SIGKILL right after a later checkpoint (possibly in the middle of the next save).
  proc = launch(workdir, log)
  wait_for_checkpoint(proc, workdir, stopped, log)
  proc.kill()
  proc.wait()
  assert 'Resuming from the checkpoint at step' in log.read_text()
  killed_at = finished_steps(workdir)[-1]
  assert stopped < killed_at < TOTAL_STEPS, 'the run ended before it could be killed'
  # 3. The same command again finishes the run.
  proc = launch(workdir, log)
  assert proc.wait(timeout=300) == 0, log.read_text()
  state = final_params(workdir)
  assert int(state['step']) == TOTAL_STEPS
  assert_same_params(state['params'], ref_state['params'])
  assert_same_params(state['ema_params'], ref_state['ema_params'])


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(reference, tmp_path):
  _, ref_state, _ = reference
  workdir, port = tmp_path / 'run', free_port()
  procs = [launch(workdir, tmp_path / f'log{i}.txt', devices=2,
                  extra_args=(f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                              f'--process_id={i}')) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.wait(timeout=400) == 0, (tmp_path / f'log{i}.txt').read_text()
  assert '2 process(es)' in (tmp_path / 'log0.txt').read_text()
  state = final_params(workdir)
  assert int(state['step']) == TOTAL_STEPS
  assert_same_params(state['params'], ref_state['params'])


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # At an absurd learning rate even AGC-limited updates (|dW| <= lr * 0.01 * |W|) overflow in a few steps.
  proc = launch(tmp_path / 'run', tmp_path / 'log.txt', checkpoint_every_steps=1,
                **{'optimizer.lr': 1e12, 'optimizer.warmup_epochs': 0.0})
  assert proc.wait(timeout=400) == 1
  log = (tmp_path / 'log.txt').read_text()
  assert 'Traceback' not in log
  bad_step = int(log.split('the training loss became ')[1].split('at step ')[1].split(';')[0])
  steps = finished_steps(tmp_path / 'run')
  assert steps[-1] == bad_step - 1 < TOTAL_STEPS
  assert f'The last good checkpoint (step {bad_step - 1}) is kept' in log
  state = final_params(tmp_path / 'run')
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))
