"""One trainer per workdir: a second one is refused naming the holder; a dead holder's lock is taken over."""

import json
import os
import pathlib
import signal
import socket
import time

import pytest

import train_subprocess as ts
from nfnet_jax.train import lock as lock_lib


def test_a_second_lock_on_the_same_workdir_is_refused_naming_the_holder(tmp_path):
  first = lock_lib.WorkdirLock(str(tmp_path))
  assert first.acquire() is None
  holder = json.loads((tmp_path / 'lock').read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  with pytest.raises(lock_lib.WorkdirLockedError) as e:
    lock_lib.WorkdirLock(str(tmp_path)).acquire()   # another open file: flock refuses it
  assert f'pid {os.getpid()}' in str(e.value) and holder['since'] in str(e.value)
  first.release()
  again = lock_lib.WorkdirLock(str(tmp_path))
  assert again.acquire() is None     # released cleanly: no takeover notice
  again.release()


def test_a_bucket_workdir_is_locked_on_this_host_without_writing_a_local_gs_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  url = f'gs://nfnet-test-{os.getpid()}/runs/a'
  first = lock_lib.WorkdirLock(url)
  assert first.acquire() is None
  assert list(tmp_path.iterdir()) == []           # nothing named 'gs:' appears where we stand
  with pytest.raises(lock_lib.WorkdirLockedError) as e:
    lock_lib.WorkdirLock(url).acquire()
  assert url in str(e.value)
  other = lock_lib.WorkdirLock(url + '2')          # another bucket workdir is free
  assert other.acquire() is None
  other.release()
  first.release()


def wait_for_lock(proc, lock_path, log, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if lock_path.exists() and lock_path.read_text().strip():
      return json.loads(lock_path.read_text())
    assert proc.poll() is None, pathlib.Path(log).read_text()
    time.sleep(0.05)
  pytest.fail('the trainer never took the lock')


@pytest.mark.slow
def test_second_trainer_is_refused_and_a_killed_trainers_lock_is_taken_over(tmp_path):
  workdir = tmp_path / 'run'
  first = ts.launch(workdir, tmp_path / 'first.txt', checkpoint_every_steps=1)
  assert wait_for_lock(first, workdir / 'lock', tmp_path / 'first.txt')['pid'] == first.pid
  ts.wait_for_checkpoint(first, workdir, 0, tmp_path / 'first.txt')
  first.send_signal(signal.SIGSTOP)   # alive and holding the lock, however slow the second start is
  # Before the fix the second trainer's start-up cleanup deleted the first one's save in progress.
  code, out = ts.run_script('train.py', *ts.cli_flags(workdir, checkpoint_every_steps=1), timeout=240)
  assert code != 0
  lines = [l for l in out.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'Traceback' not in out, out
  assert f'pid {first.pid}' in lines[0] and socket.gethostname() in lines[0], lines[0]
  assert 'nf_resnet50:' not in out    # it never started training
  first.kill()
  assert first.wait() == -signal.SIGKILL
  # The killed trainer left its line but no flock: the next one takes over, says so and finishes.
  log = ts.run_to_end(workdir, tmp_path / 'second.txt')
  assert f'Took over the lock of {workdir}' in log and f'pid {first.pid}' in log, log
  assert ts.finished_steps(workdir)[-1] == ts.TOTAL_STEPS
  assert (workdir / 'lock').read_text() == ''      # released at the end
