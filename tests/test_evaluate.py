"""Evaluation: every example counted once whatever the batch, checkpoints and params files, the CLIs."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from nfnet_jax import data, pretrained
from nfnet_jax.evaluate import evaluate_run, evaluate_split
from nfnet_jax.train import Checkpointer, validate
from nfnet_jax.train.build import build, initial_state_fn
from nfnet_jax.train.loop import config_json

REPO = pathlib.Path(__file__).resolve().parents[1]


def quickstart_config():
  spec = importlib.util.spec_from_file_location('quickstart', REPO / 'configs' / 'quickstart.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.batch_size, config.eval_batch_size, config.total_steps = 32, 64, 100
  return config


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A workdir holding one real checkpoint (the initial state, with EMA params made different)."""
  config = quickstart_config()
  run = validate(config)
  model, optimizer, _ = build(run)
  state = jax.device_get(initial_state_fn(run, model, optimizer)(jax.random.PRNGKey(1)))
  state = state._replace(ema_params=jax.tree.map(lambda x: x * 0.5, state.params))
  workdir = tmp_path_factory.mktemp('run')
  checkpointer = Checkpointer(str(workdir))
  checkpointer.save(state, config_json(config))
  checkpointer.close()
  return workdir, config, model, state


def direct_metrics(model, params, model_state):
  """Top-1 and loss over digits' validation split computed in one unpadded batch, without pmap."""
  (batch,) = list(data.eval_iterator('digits', data_dir=None, split='validation', global_batch_size=300,
                                     image_size=32, local_devices=1))
  assert batch['mask'].all()
  outputs, _ = jax.jit(lambda p, s, x: model.apply(p, s, None, x, is_training=False))(
      params, model_state, batch['images'][0])
  logits = np.asarray(outputs['logits'], np.float64)
  labels = batch['labels'][0]
  logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
  return {'top1': float(np.mean(logits.argmax(1) == labels)),
          'loss': float(-np.mean(logp[np.arange(len(labels)), labels])), 'num_examples': len(labels)}


@pytest.mark.slow
@pytest.mark.parametrize('batch_size', [12, 64])
def test_every_example_is_counted_once_whatever_the_batch(run_dir, batch_size):
  _, _, model, state = run_dir
  want = direct_metrics(model, state.params, state.model_state)
  got = evaluate_split(model, state.params, state.model_state, dataset='digits', data_dir=None,
                       split='validation', batch_size=batch_size, image_size=32)
  assert got['num_examples'] == 300                      # 300 = 25 x 12, but 4.7 x 64: padded
  assert got['top1'] == pytest.approx(want['top1'], abs=1e-9)
  assert got['loss'] == pytest.approx(want['loss'], rel=1e-5)
  assert got['top1'] <= got['top5'] <= 1.0


@pytest.mark.slow
def test_evaluate_run_scores_params_and_ema_and_writes_json(run_dir, tmp_path):
  workdir, config, model, state = run_dir
  out = tmp_path / 'out.json'
  result = evaluate_run(config, workdir=str(workdir), out=str(out))
  val = result['evals']['val']
  assert result['step'] == 0 and val['split'] == 'validation' and val['image_size'] == 32
  assert json.loads(out.read_text()) == json.loads((workdir / 'eval.json').read_text())
  assert val['params'] == pytest.approx(json.loads(out.read_text())['evals']['val']['params'])
  want = direct_metrics(model, state.params, state.model_state)
  assert val['params']['top1'] == pytest.approx(want['top1'], abs=1e-9)
  want_ema = direct_metrics(model, state.ema_params, state.ema_model_state)
  assert val['ema_params']['loss'] == pytest.approx(want_ema['loss'], rel=1e-5)
  assert val['ema_params']['num_examples'] == 300


@pytest.mark.slow
def test_export_then_evaluate_pretrained_gives_the_ema_result(run_dir, tmp_path):
  workdir, config, model, state = run_dir
  env = dict(os.environ, PYTHONPATH=str(REPO))
  npz = tmp_path / 'ema.npz'
  proc = subprocess.run([sys.executable, 'scripts/export.py', f'--workdir={workdir}', f'--out={npz}',
                         '--ema'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  flat = np.load(npz)
  assert 'NF_ResNet/~/linear/w' in flat.files
  np.testing.assert_array_equal(flat['NF_ResNet/~/linear/w'], state.ema_params['NF_ResNet/~/linear']['w'])
  loaded = pretrained.load(npz)
  result = evaluate_run(config, pretrained=str(npz))
  val = result['evals']['val']
  assert 'ema_params' not in val and result['step'] is None
  want = direct_metrics(model, loaded, state.model_state)
  assert val['params']['top1'] == pytest.approx(want['top1'], abs=1e-9)
  assert val['params']['num_examples'] == 300


def test_evaluate_run_rejects_bad_inputs_clearly(tmp_path):
  config = quickstart_config()
  with pytest.raises(ValueError, match='exactly one of --workdir'):
    evaluate_run(config)
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*train first'):
    evaluate_run(config, workdir=str(tmp_path))
  with pytest.raises(ValueError, match="eval set 'val': Dataset 'digits' has no split 'test'"):
    config.evals.val.split = 'test'
    evaluate_run(config, workdir=str(tmp_path))
  config.evals.val.split = None
  with pytest.raises(ValueError, match=r"unknown eval set\(s\) \['v3'\]; config.evals has \['val'\]"):
    evaluate_run(config, workdir=str(tmp_path), evals=['v3'])
  wrong = tmp_path / 'wrong.npz'
  pretrained.save(wrong, {'NF_ResNet/~/linear': {'w': np.zeros((3, 3), np.float32)}})
  with pytest.raises(ValueError, match='do not fit the model'):
    evaluate_run(config, pretrained=str(wrong))
