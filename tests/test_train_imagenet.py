"""End to end on the miniature ImageNet (tfds imagenet2012 layout): bf16, RandAugment + MixUp/CutMix, accumulation."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from nfnet_jax.train import train_and_evaluate
from nfnet_jax.train.writers import read_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_and_evaluate_on_miniature_imagenet(mini_imagenet_dir, tmp_path):
  spec = importlib.util.spec_from_file_location('nfnet_cfg', REPO / 'configs' / 'nfnet.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('F0')          # the real recipe, shrunk to a tiny model and batch
  config.model = 'nf_resnet50'
  config.model_kwargs = {'depth': (1, 1, 1, 1), 'width': 1, 'stochdepth_rate': 0.25}
  config.data_dir = mini_imagenet_dir
  config.batch_size, config.grad_accum_steps, config.eval_batch_size = 16, 2, 8
  config.image_size = config.eval_image_size = 32
  config.total_steps, config.optimizer.warmup_epochs = 3, 0.2
  config.log_every_steps = config.checkpoint_every_steps = 1
  result = train_and_evaluate(config, str(tmp_path))

  assert result['step'] == 3 and config.bf16
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(result['state'].params))  # f32 masters
  assert list(result['eval']) == ['val']              # ReaL and V2 are not prepared here: skipped
  for name in ('params', 'ema_params'):
    assert result['eval']['val'][name]['num_examples'] == 10   # every validation image, padded batches
    assert np.isfinite(result['eval']['val'][name]['loss'])
  rows = [r for r in read_jsonl(tmp_path / 'metrics.jsonl') if 'train/loss' in r]
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r['train/loss']) and np.isfinite(r['train/grad_norm']) for r in rows)
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == [1, 2, 3]
