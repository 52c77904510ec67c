"""Config files: the paper recipes, launch commands in docstrings, and fast, clear config errors."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from nfnet_jax import models
from nfnet_jax.train import ConfigError, base_config, train_and_evaluate, validate

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name):
  spec = importlib.util.spec_from_file_location(name, REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def small(config, **overrides):
  """The same config on digits with a small batch, to validate it without ImageNet."""
  config.dataset, config.batch_size, config.total_steps = 'digits', 32, 1000
  config.augment = 'cutmix_mixup'
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize('name', ['nfnet', 'nf_resnet', 'resnet_bn', 'quickstart', 'skipinit_resnet',
                                  'fixup_resnet', 'nfnet_sam'])
def test_docstring_gives_the_launch_command_and_every_key_is_present(name):
  module = load(name)
  assert f'python scripts/train.py --config=configs/{name}.py' in module.__doc__
  assert f'python scripts/evaluate.py --config=configs/{name}.py' in module.__doc__
  config = module.get_config()
  assert set(base_config().keys()) <= set(config.keys())


@pytest.mark.parametrize('variant', [f'F{i}' for i in range(8)] + [f'F{i}+' for i in range(8)])
def test_nfnet_configs_follow_the_paper_recipe(variant):
  c = load('nfnet').get_config(variant)
  assert c.model == 'nfnet_' + variant.lower().replace('+', 'plus')
  assert c.batch_size == 4096 and c.num_epochs == 360 and c.dataset == 'imagenet2012'
  assert c.optimizer.lr == 0.1 and c.optimizer.warmup_epochs == 5 and c.optimizer.schedule == 'cosine'
  assert c.optimizer.name == 'sgd' and c.optimizer.momentum == 0.9 and c.optimizer.nesterov
  assert c.optimizer.weight_decay == 2e-5
  assert c.optimizer.clipping == 0.01 and c.optimizer.clip_eps == 1e-3
  assert c.ema_decay == 0.99999 and c.label_smoothing == 0.1 and c.bf16
  assert c.model_kwargs.stochdepth_rate == 0.25
  level = {0: '405', 1: '410', 2: '410'}.get(int(variant[1]), '415')
  assert c.augment == f'cutmix_mixup_randaugment_{level}'
  # Image sizes and dropout are the variant's own (from the model registry).
  assert c.image_size is None and c.eval_image_size is None and 'drop_rate' not in c.model_kwargs
  run = validate(small(c), device_count=4)
  spec = models.get_spec(c.model)
  assert (run.image_size, run.eval_image_size) == (spec.train_image_size, spec.test_image_size)


def test_other_configs_name_registered_models_and_validate():
  for config in (load('nf_resnet').get_config('50'), load('resnet_bn').get_config('50'),
                 load('nf_resnet').get_config('101')):
    validate(small(config, augment='none'), device_count=4)
  assert load('resnet_bn').get_config().model_kwargs.bn_axis_name == 'batch'
  q = load('quickstart').get_config()
  assert q.dataset == 'digits' and q.model in models.available()
  validate(q, device_count=1)
  with pytest.raises(ValueError, match='F9'):
    load('nfnet').get_config('F9')


def test_nfnet_sam_config_is_the_f6_recipe_plus_sam():
  sam, f6 = load('nfnet_sam').get_config(), load('nfnet').get_config('F6')
  assert sam.model == 'nfnet_f6' and sam.optimizer.sam_mode == 'device'
  assert sam.optimizer.sam_rho == 0.05 and f6.optimizer.sam_rho == 0.0
  sam.optimizer.sam_rho = f6.optimizer.sam_rho
  assert sam.to_dict() == f6.to_dict()
  validate(small(load('nfnet_sam').get_config(), model='nf_resnet50', augment='none'), device_count=4)


def test_nf_and_bn_resnet_configs_share_the_paper_recipe():
  nf, bn = load('nf_resnet').get_config('152'), load('resnet_bn').get_config('152')
  skip, fixup = load('skipinit_resnet').get_config('152'), load('fixup_resnet').get_config('152')
  assert (nf.model, bn.model, skip.model, fixup.model) == (
      'nf_resnet152', 'resnet152', 'skipinit_resnet152', 'fixup_resnet152')
  for c in (skip, fixup):
    assert c.model_kwargs.to_dict() == {'stochdepth_rate': 0.1}
    validate(small(c.copy_and_resolve_references(), augment='none',
                   model=c.model.replace('152', '50')), device_count=4)
  for c in (nf, bn, skip, fixup):
    assert (c.batch_size, c.num_epochs, c.augment, c.label_smoothing) == (1024, 90.0, 'none', 0.1)
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.clipping) == (0.1, 5e-5, None)
    assert c.optimizer.nesterov and c.optimizer.warmup_epochs == 5.0 and c.bf16
  assert nf.model_kwargs.to_dict() == {'stochdepth_rate': 0.1}
  with pytest.raises(ValueError, match=r'unknown resnet depth 51; choose one of \(50, 101'):
    load('resnet_bn').get_config('51')


@pytest.mark.parametrize('overrides, message', [
    ({'batch_size': 30}, r'batch_size=30 must be divisible by devices x grad_accum_steps = 4 x 1'),
    ({'grad_accum_steps': 3}, r'divisible by devices x grad_accum_steps = 4 x 3 = 12'),
    ({'model': 'nfnet_f99'}, r"config.model='nfnet_f99'.*Available models: .*nfnet_f0"),
    ({'dataset': 'no_such_dataset'}, r"config.dataset='no_such_dataset'"),
    ({'image_size': 16}, r'image_size=16 is too small for nf_resnet50: it needs at least 32'),
    ({'augment': 'cutmix_sometimes'}, r"config.augment='cutmix_sometimes'"),
    ({'eval_split': 'test'}, r"eval_split='test' is not a split of digits"),
    ({'label_smoothing': 1.5}, r'label_smoothing=1.5 must be in \[0, 1\)'),
    ({'total_steps': 3}, r'config.optimizer: .*warmup'),
])
def test_bad_config_raises_a_clear_error(overrides, message):
  config = load('quickstart').get_config()
  config.batch_size = 32
  for key, value in overrides.items():
    config[key] = value
  with pytest.raises(ConfigError, match=message):
    validate(config, device_count=4)


def test_bad_model_kwargs_and_data_errors_surface_before_compiling(tmp_path):
  config = load('quickstart').get_config()
  config.model_kwargs.no_such_option = 1
  with pytest.raises(ConfigError, match='no_such_option'):
    validate(config, device_count=4)
  # digits has no per-image augmentation: caught when the first batch is read, before any compile.
  config = load('quickstart').get_config()
  config.augment = 'randaugment_405'
  with pytest.raises(ConfigError, match='RandAugment'):
    train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


def test_train_script_reports_a_bad_config_and_exits_2(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = subprocess.run(
      [sys.executable, 'scripts/train.py', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
       '--config.batch_size=30'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert 'error: config.batch_size=30 must be divisible' in proc.stderr
  assert 'Traceback' not in proc.stderr
