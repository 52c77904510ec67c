"""scripts/train.py --dry_run: a pod's config checked on this machine without running it."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from nfnet_jax import train
from nfnet_jax.train import dry_run

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config_module(name):
  spec = importlib.util.spec_from_file_location(f'configs_{name}', REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


nfnet, quickstart = load_config_module('nfnet'), load_config_module('quickstart')


@pytest.mark.slow
def test_f0_on_256_devices_in_32_processes_compiles_and_reports_its_layout(tmp_path):
  report = dry_run.dry_run(nfnet.get_config('F0'), str(tmp_path / 'run'), devices=256,
                           processes=32)
  assert (report['per_device_batch'], report['local_devices'], report['per_process_batch']) == (16, 8, 128)
  assert (report['steps_per_epoch'], report['total_steps']) == (1_281_167 // 4096, 112_320)
  peak = report['memory']['peak_bytes']
  assert 0.5 * 2**30 < peak < 32 * 2**30   # the bf16 F0 step: params, momentum and EMA + activations
  text = dry_run.format_report(report)
  assert 'global batch 4096 = 256 devices x 1 micro-batches x 16 per device' in text
  assert 'sized from its published splits' in text and str(tmp_path / 'run') in text
  dry_run.check_fits(report, 32.0)
  with pytest.raises(train.ConfigError, match=r'needs about .* GiB per device.*grad_accum_steps'):
    dry_run.check_fits(report, 0.25)


def test_a_config_that_cannot_run_on_the_topology_fails_with_a_clear_message(tmp_path):
  config = nfnet.get_config('F0')
  config.batch_size = 1000
  with pytest.raises(train.ConfigError, match='batch_size=1000 must be divisible by devices x '
                     'grad_accum_steps = 256'):
    dry_run.dry_run(config, str(tmp_path), devices=256, processes=32)
  with pytest.raises(train.ConfigError, match='must be a positive multiple of --dry_run_processes=3'):
    dry_run.dry_run(nfnet.get_config('F0'), str(tmp_path), devices=256, processes=3)
  config = nfnet.get_config('F0')
  config.data_dir = str(tmp_path / 'missing')
  with pytest.raises(train.ConfigError, match='missing.* does not exist'):
    dry_run.dry_run(config, str(tmp_path), devices=256, processes=32)


def test_the_script_reports_the_quickstart_and_says_what_to_change_when_it_does_not_fit(tmp_path):
  flags = ['--config=configs/quickstart.py', f'--workdir={tmp_path}', '--dry_run_devices=8',
           '--dry_run_processes=2']
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  proc = subprocess.run([sys.executable, 'scripts/train.py', '--dry_run', *flags,
                         '--dry_run_memory_gb=0.001'], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 2, proc.stderr
  error = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1 and 'per device' in error[0] and 'raise config.grad_accum_steps' in error[0]
  assert 'Traceback' not in proc.stderr
  text = dry_run.format_report(dry_run.dry_run(quickstart.get_config(), str(tmp_path), devices=8,
                                               processes=2))
  assert 'global batch 64 = 8 devices x 1 micro-batches x 8 per device' in text
  assert 'starts from scratch' in text


RECIPES = [  # (launch script, flags it passes, --dry_run_devices, --dry_run_processes)
    ('tpu_pod.sh', {}, 256, 32),
    ('slurm_gpu.sbatch', {'grad_accum_steps': 4}, 32, 32),
    ('multi_gpu.sh', {'grad_accum_steps': 16}, 8, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize('name,overrides,devices,processes', RECIPES)
def test_every_launch_recipe_passes_the_dry_run(name, overrides, devices, processes, tmp_path):
  text = (REPO / 'scripts' / 'launch' / name).read_text()
  assert 'configs/nfnet.py:F0' in text
  assert f'--dry_run_devices={devices} --dry_run_processes={processes}' in text
  for key, value in overrides.items():
    assert f'--config.{key}={value}' in text
  config = nfnet.get_config('F0')
  config.update(overrides)
  report = dry_run.dry_run(config, str(tmp_path), devices=devices, processes=processes,
                           compile_step=False)   # the F0 compile is the slow test above
  assert report['per_device_batch'] * devices * report['grad_accum_steps'] == 4096
