"""One clear line for every failure: disk full, read-only folders, directories, damaged and hostile files."""

import errno
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import train_subprocess as ts
from nfnet_jax import cli, pretrained
from nfnet_jax.train import checkpoints, integrity
from nfnet_jax.train.writers import MetricWriter, read_jsonl

# The error tensorstore raised when the 20 MB disk filled up during a save.
ORBAX_ENOSPC = ('RESOURCE_EXHAUSTED: Error writing "ema_params.w/0" in OCDBT database at local file '
                '"/run/checkpoints/6.orbax-checkpoint-tmp/state/": Failed writing: "/run/checkpoints/6.orbax-'
                'checkpoint-tmp/state/d/b669": Failed to write 979818 bytes to file 15: No space left on '
                "device [os_error_code='28']")


def test_os_failures_are_one_line_naming_the_cause_and_the_path():
  try:
    try:
      raise ValueError(ORBAX_ENOSPC)
    except ValueError as inner:
      raise RuntimeError('wrapped by orbax') from inner
  except RuntimeError as e:
    message, code, _ = cli.describe(e)
  assert message.startswith('no space left on the device: /run/checkpoints/6.orbax-checkpoint-tmp/state/d/b669')
  assert 'run the same command again' in message and code == 1
  message, _, _ = cli.describe(PermissionError(errno.EACCES, 'Permission denied', '/ro/checkpoints'))
  assert message == 'permission denied: /ro/checkpoints; make it accessible to this user or choose another path.'
  assert integrity.root_cause(ValueError(ORBAX_ENOSPC)).startswith('No space left on device (/run/')


def test_damaged_and_wrong_type_params_files_name_the_path(tmp_path):
  params = {'net/~/linear': {'w': np.ones((3, 4), np.float32)}}
  pretrained.save(tmp_path / 'p.npz', params)
  data = (tmp_path / 'p.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{tmp_path / "cut.npz"}: not a readable .npz file .*export it again'):
    pretrained.load(tmp_path / 'cut.npz')
  with pytest.raises(IsADirectoryError) as e:
    pretrained.load(tmp_path)
  assert cli.describe(e.value)[0] == f'is a directory: {tmp_path}; give a file path (e.g. DIR/params.npz).'
  with pytest.raises(IsADirectoryError):   # export --out=<a directory>: refused before anything is read
    checkpoints.export(str(tmp_path / 'no_run'), str(tmp_path))


def test_saved_npz_respects_the_umask_and_float16_params_are_said(tmp_path):
  params = {'net/~/linear': {'w': np.ones((3, 4), np.float16)}}
  for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
    old = os.umask(umask)
    try:
      pretrained.save(tmp_path / f'{umask}.npz', params)
    finally:
      os.umask(old)
    assert (tmp_path / f'{umask}.npz').stat().st_mode & 0o777 == mode
  like = {'net/~/linear': {'w': np.zeros((3, 4), np.float32)}}
  with pytest.warns(UserWarning, match=r'1 params are float16, not the model.s dtype'):
    loaded = pretrained.load(tmp_path / f'{0o022}.npz', like=like)
  assert loaded['net/~/linear']['w'].dtype == np.float32
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    pretrained.load(tmp_path / f'{0o022}.npz', like={'net/~/linear': {'w': np.zeros((3, 4), np.float16)}})


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (4, 8, 10):      # killed after logging step 10, the last checkpoint was step 8
    writer.write(step, {'loss': float(step)}, prefix='train/')
  writer.close()
  writer = MetricWriter(str(tmp_path), start_step=8)
  writer.write(10, {'loss': 1.0}, prefix='train/')
  writer.close()
  assert [(r['step'], r['train/loss']) for r in read_jsonl(tmp_path / 'metrics.jsonl')] == [
      (4, 4.0), (8, 8.0), (10, 1.0)]


def test_hostile_pickle_is_one_line_and_never_runs(tmp_path):
  marker = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  (tmp_path / 'F0_haiku.npz').write_bytes(pickle.dumps(Evil()))
  code, out = ts.run_script('classify.py', f'--pretrained={tmp_path / "F0_haiku.npz"}', '--model=nfnet_f0',
                            tmp_path / 'x.png')
  assert code == 2 and not marker.exists()
  assert 'Traceback' not in out
  (line,) = [l for l in out.splitlines() if l.startswith('error:')]
  assert str(tmp_path / 'F0_haiku.npz') in line and "refusing to unpickle 'posix.system'" in line


def can_mount_tmpfs():
  if shutil.which('unshare') is None:
    return False
  return subprocess.run(['unshare', '-rm', 'sh', '-c', 'mount -t tmpfs -o size=1m none /mnt'],
                        capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason='needs unshare -rm to mount a small tmpfs')
def test_disk_full_is_one_line_keeps_earlier_checkpoints_and_a_rerun_with_space_ends_identical(tmp_path):
  small, kept = tmp_path / 'small', tmp_path / 'kept'
  small.mkdir()
  flags = ts.cli_flags(small / 'run', checkpoint_every_steps=2, total_steps=8)
  # Each checkpoint of this model takes ~5.6 MB: a 14 MB disk fills during the third save. The
  # tmpfs lives as long as the namespace, so the workdir is copied out before it ends.
  script = (f'mount -t tmpfs -o size=14m none {small} && {sys.executable} scripts/train.py '
            + ' '.join(f"'{f}'" for f in flags) + f' > {tmp_path / "full.txt"} 2>&1; code=$?; '
            f'cp -a {small / "run"} {kept}; exit $code')
  code = subprocess.run(['unshare', '-rm', 'sh', '-c', script], cwd=ts.REPO, env=ts.script_env(1),
                        timeout=900).returncode
  log = (tmp_path / 'full.txt').read_text()
  assert code == 1, log
  assert 'Traceback' not in log and 'Event loop is closed' not in log and 'never retrieved' not in log
  (line,) = [l for l in log.splitlines() if l.startswith('error:')]
  assert 'no space left on the device' in line and 'the checkpoints saved before are intact' in line
  assert ts.finished_steps(kept) == [2, 4]
  # With space, the same command finishes; the result equals an uninterrupted run.
  log = ts.run_to_end(kept, tmp_path / 'rerun.txt', devices=1, checkpoint_every_steps=2, total_steps=8)
  assert 'Resuming from the checkpoint at step 4' in log
  ts.run_to_end(tmp_path / 'ref', tmp_path / 'ref.txt', devices=1, checkpoint_every_steps=2, total_steps=8)
  ts.assert_same_params(ts.final_params(kept)['params'], ts.final_params(tmp_path / 'ref')['params'])


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason='needs unshare -rm to mount read-only')
def test_read_only_checkpoints_folder_fails_at_start_in_one_line(tmp_path):
  ckpt = tmp_path / 'run' / 'checkpoints'
  ckpt.mkdir(parents=True)
  flags = ts.cli_flags(tmp_path / 'run')
  script = (f'mount --bind -o ro {ckpt} {ckpt} && {sys.executable} scripts/train.py '
            + ' '.join(f"'{f}'" for f in flags))
  proc = subprocess.run(['unshare', '-rm', 'sh', '-c', script], cwd=ts.REPO, env=ts.script_env(1),
                        capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1 and 'Traceback' not in out
  (line,) = [l for l in out.splitlines() if l.startswith('error:')]
  assert line.startswith(f'error: read-only file system: {ckpt}'), line
  assert 'step 1/' not in out and '[#' not in out     # before any training
