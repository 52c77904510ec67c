"""Every path on a gs:// bucket, end to end and offline: train -> SIGTERM -> resume -> export ->
evaluate -> classify with the workdir, the exported params, --out and the images all on
gs://, served by a local GCS emulator (gcp-storage-emulator, pure Python, with GCS's object
preconditions added by tests/gcs_emulator.py).

Orbax writes arrays with tensorstore (pointed at the emulator by TENSORSTORE_GCS_HTTP_URL) and
everything else through etils.epath, as does nfnet_jax.paths; EPATH_USE_TF=false makes epath use
gcsfs, which STORAGE_EMULATOR_HOST points at the emulator. TensorFlow's own GCS client cannot be
pointed at an emulator (its endpoint is compiled in), so this run writes no TensorBoard files
(config.tensorboard=False) and reads digits, not tfds data; both are TensorFlow's own gs:// code.
The final params must equal those of the same run, uninterrupted, on local disk.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS = 40
FLAGS = ['--config=configs/quickstart.py', '--config.batch_size=32',
         f'--config.total_steps={TOTAL_STEPS}', '--config.checkpoint_every_steps=4',
         '--config.log_every_steps=2', '--config.eval_every_steps=0', '--config.tensorboard=False',
         '--config.augment=cutmix_mixup', '--config.optimizer.warmup_epochs=0.1']
BUCKET = 'nfnet-test'


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """A local GCS emulator holding one bucket; yields the environment that points clients at it."""
  pytest.importorskip('gcp_storage_emulator')
  pytest.importorskip('gcsfs')
  port = free_port()
  log = open(tmp_path_factory.mktemp('gcs') / 'emulator.log', 'w')
  server = subprocess.Popen([sys.executable, str(REPO / 'tests' / 'gcs_emulator.py'), 'start', '--host=127.0.0.1',
                             f'--port={port}', '--in-memory', f'--default-bucket={BUCKET}'],
                            stdout=log, stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}'
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(url + '/', timeout=2)
      break
    except OSError:
      if time.time() > deadline or server.poll() is not None:
        server.kill()
        pytest.fail('the GCS emulator did not start')
      time.sleep(0.2)
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=2',
             EPATH_USE_TF='false', STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
             GOOGLE_AUTH_TOKEN_FOR_TESTING='offline', GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false')
  yield env
  server.kill()
  server.wait()


def script(env, name, *args, timeout=1200):
  proc = subprocess.run([sys.executable, f'scripts/{name}.py', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def restore_params(env, workdir):
  code = ('import sys, pickle; from nfnet_jax.train import checkpoints; '
          'c = checkpoints.Checkpointer(sys.argv[1], read_only=True); s = c.restore_raw(); '
          'c.close(); sys.stdout.buffer.write(pickle.dumps({k: s[k] for k in ("step", "params", "ema_params")}))')
  proc = subprocess.run([sys.executable, '-c', code, workdir], cwd=REPO, env=env, capture_output=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr.decode()
  import pickle  # pylint: disable=import-outside-toplevel
  return pickle.loads(proc.stdout)


def checkpoint_steps(env, workdir):
  code = ('import sys; from nfnet_jax.train import checkpoints; '
          'c = checkpoints.Checkpointer(sys.argv[1], read_only=True); print(c.all_steps()); c.close()')
  out = subprocess.run([sys.executable, '-c', code, workdir], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  return eval(out.stdout.strip() or '[]')  # pylint: disable=eval-used


@pytest.mark.slow
def test_train_sigterm_resume_export_evaluate_classify_on_a_bucket(gcs, tmp_path):
  env = gcs
  local = tmp_path / 'local'
  script(env, 'train', *FLAGS, f'--workdir={local}')

  run = f'gs://{BUCKET}/runs/quick'
  log = open(tmp_path / 'train.log', 'w')
  proc = subprocess.Popen([sys.executable, 'scripts/train.py', *FLAGS, f'--workdir={run}'],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 900
    while f'step 6/{TOTAL_STEPS}' not in (tmp_path / 'train.log').read_text():  # a save is behind
      assert proc.poll() is None and time.time() < deadline, (tmp_path / 'train.log').read_text()
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 0, (tmp_path / 'train.log').read_text()
  finally:
    if proc.poll() is None:
      proc.kill()
  text = (tmp_path / 'train.log').read_text()
  assert 'SIGTERM: saved the checkpoint at step' in text, text
  stopped = checkpoint_steps(env, run)[-1]
  assert stopped < TOTAL_STEPS, 'the run ended before SIGTERM'

  out = script(env, 'train', *FLAGS, f'--workdir={run}')
  assert f'Resuming from the checkpoint at step {stopped} in {run}' in out
  ref, got = restore_params(env, str(local)), restore_params(env, run)
  assert int(got['step']) == TOTAL_STEPS
  for name in ('params', 'ema_params'):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref[name]),
                            jax.tree.leaves(got[name])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))

  exported = f'gs://{BUCKET}/export/quick.npz'
  assert f'to {exported}' in script(env, 'export', f'--workdir={run}', f'--out={exported}', '--ema')
  out_json = f'gs://{BUCKET}/results/eval.json'
  script(env, 'evaluate', '--config=configs/quickstart.py', f'--pretrained={exported}',
         f'--out={out_json}')
  script(env, 'evaluate', '--config=configs/quickstart.py', f'--workdir={run}')
  check = ('import json, sys; from nfnet_jax import paths; '
           'a = json.loads(paths.read_text(sys.argv[1])); b = json.loads(paths.read_text(sys.argv[2])); '
           'rows = paths.read_text(sys.argv[3]).splitlines(); '
           'a, b = a["evals"]["val"], b["evals"]["val"]; '
           'assert a["params"] == b["ema_params"] and a["params"]["num_examples"] == 300, (a, b); '
           'assert json.loads(rows[-1])["step"] == %d, rows; print("ok")' % TOTAL_STEPS)
  checked = subprocess.run([sys.executable, '-c', check, out_json, f'{run}/eval.json',
                            f'{run}/metrics.jsonl'], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
  assert checked.stdout.strip() == 'ok', checked.stderr

  image = f'gs://{BUCKET}/images/digit.png'
  write = ('import sys, io, numpy as np; from PIL import Image; from nfnet_jax import paths; '
           'b = io.BytesIO(); Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(b, "PNG"); '
           'paths.write_bytes(sys.argv[1], b.getvalue())')
  subprocess.run([sys.executable, '-c', write, image], cwd=REPO, env=env, check=True, timeout=120)
  out = script(env, 'classify', f'--workdir={run}', '--top_k=3', image)
  assert out.splitlines()[0] == image and len(out.splitlines()) == 4, out
  assert not (REPO / 'gs:').exists(), 'a bucket path was written as a local folder named gs:'
