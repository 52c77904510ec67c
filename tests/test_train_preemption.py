"""Multi-host preemption: a SIGTERM to one of two processes makes both save the same step and stop
(jax's preemption service and multihost_utils.reached_preemption_sync_point)."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from nfnet_jax.train import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ['--config=configs/quickstart.py', '--config.batch_size=32', '--config.total_steps=400',
         '--config.checkpoint_every_steps=2', '--config.log_every_steps=100',
         '--config.eval_every_steps=0', '--config.tensorboard=False']


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def steps(workdir):
  d = checkpoints.checkpoint_dir(str(workdir))
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_sigterm_to_one_host_makes_every_host_save_the_same_step(tmp_path):
  workdir, port = tmp_path / 'run', free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  logs = [tmp_path / f'log{i}.txt' for i in range(2)]
  procs = [subprocess.Popen([sys.executable, 'scripts/train.py', *FLAGS, f'--workdir={workdir}',
                             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                             f'--process_id={i}'], cwd=REPO, env=env, stdout=open(logs[i], 'w'),
                            stderr=subprocess.STDOUT) for i in range(2)]
  try:
    deadline = time.time() + 1200
    while not steps(workdir):
      assert all(p.poll() is None for p in procs) and time.time() < deadline, logs[0].read_text()
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)   # only the second host is told
    for proc, log in zip(procs, logs):
      assert proc.wait(timeout=600) == 0, log.read_text()
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  text = logs[0].read_text()
  assert 'SIGTERM: saved the checkpoint at step' in text, text
  saved = int(text.split('saved the checkpoint at step ')[1].split()[0])
  assert steps(workdir)[-1] == saved < 400
