"""The two reproduction scripts end to end in --quick mode, as a user runs them, and what they show.

scripts/reproduce_agc.py --quick: at B = 256 and lr 1.6 the unclipped NF-ResNet diverges, the same
NF-ResNet with AGC (λ = 0.01) trains, and is not behind the BN-ResNet (NFNet paper, Sec. 4.1).
scripts/reproduce_batch_size.py --quick: at B = 2 the BN-ResNet falls far behind the NF-ResNet
(NF-ResNet paper). The thresholds leave a margin below the numbers these runs give on a CPU.
"""

import json
import pathlib
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

import train_subprocess as ts

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(name, out):
  proc = subprocess.run([sys.executable, f'scripts/{name}.py', '--quick', f'--out={out}'],
                        cwd=REPO, env=ts.script_env(devices=1), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def check_png(path):
  image = matplotlib.image.imread(str(path))
  assert image.shape[0] > 400 and np.std(image[..., :3]) > 0.05  # drawn, not blank


@pytest.mark.slow
def test_agc_quick_unclipped_diverges_agc_trains_and_is_not_behind_bn(tmp_path):
  log = run_script('reproduce_agc', tmp_path)
  summary = json.loads((tmp_path / 'agc_ablation.json').read_text())
  runs = {(r['model'], r['clip_mode']): r for r in summary['runs']}
  assert set(runs) == {('nf', 'none'), ('nf', 'agc'), ('bn', 'none')}
  assert all(r['batch_size'] == 256 and r['steps'] == 100 for r in runs.values())
  unclipped, agc, bn = runs[('nf', 'none')], runs[('nf', 'agc')], runs[('bn', 'none')]
  assert unclipped['diverged'] and unclipped['diverged_step'] <= 20, unclipped
  assert 'DIVERGED' in log
  assert not agc['diverged'] and agc['eval_top1'] >= 0.9, agc          # 97.0% here
  assert 0.0 < agc['mean_clip_fraction'] < 1.0                          # 0.17 here
  assert not bn['diverged'] and agc['eval_top1'] >= bn['eval_top1'], (agc, bn)  # BN 18.7% here
  check_png(tmp_path / 'agc_ablation.png')


@pytest.mark.slow
def test_batch_size_quick_bn_falls_behind_nf_at_batch_2(tmp_path):
  run_script('reproduce_batch_size', tmp_path)
  summary = json.loads((tmp_path / 'batch_size_robustness.json').read_text())
  runs = {r['model']: r for r in summary['runs']}
  assert set(runs) == {'bn', 'nf'}
  assert all(r['batch_size'] == 2 and r['steps'] == 200 for r in runs.values()), runs
  nf, bn = runs['nf'], runs['bn']
  assert not nf['diverged'] and nf['eval_top1'] >= 0.6, nf            # 72.3% here
  assert bn['diverged'] or bn['eval_top1'] <= nf['eval_top1'] - 0.3, bn  # 13.0% here
  check_png(tmp_path / 'batch_size_robustness.png')
