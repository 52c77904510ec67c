"""The README's quickstart as a user runs it: it lands (>= 95% top-1) and the console shows only ours."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# A line a library logged (absl/glog format "I1201 22:20:52.149 ..." or "W0000 00:00:...") or
# TensorFlow's loading banners; none may reach the user's console.
LIBRARY_LOG_LINE = re.compile(
    r'^[IWEF]\d{4} \d\d:\d\d:\d\d|^WARNING: All log messages before absl|oneDNN custom operations|'
    r'cpu_feature_guard|Given directory is read only')


def _run(script, workdir):
  # The user's environment: no TF_CPP_MIN_LOG_LEVEL or XLA flags from the test session.
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS', 'XLA_FLAGS')}
  env['PYTHONPATH'] = str(REPO)
  proc = subprocess.run([sys.executable, script, '--config=configs/quickstart.py',
                         f'--workdir={workdir}'], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1800)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  # XLA's slow-compile alarm is a real report about an overloaded machine, not start-up noise.
  noise = [line for line in (proc.stdout + proc.stderr).splitlines()
           if LIBRARY_LOG_LINE.search(line) and 'slow_operation_alarm' not in line]
  assert not noise, '\n'.join(noise)
  return proc


@pytest.mark.slow
def test_quickstart_lands_above_95_percent_with_a_quiet_console(tmp_path):
  workdir = tmp_path / 'quickstart'
  train = _run('scripts/train.py', workdir)
  assert 'step 690/690' in train.stdout + train.stderr
  evaluate = _run('scripts/evaluate.py', workdir)
  assert '| val | digits validation |' in evaluate.stdout
  result = json.loads((workdir / 'eval.json').read_text())
  val = result['evals']['val']
  assert result['step'] == 690 and val['params']['num_examples'] == 300
  assert val['params']['top1'] >= 0.95, result
  assert val['ema_params']['top1'] >= 0.95, result
