"""Fine-tuning: init_from (reset head, refusal with names), freezing, and a run from an exported run."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from nfnet_jax import data as data_lib
from nfnet_jax import evaluate as eval_lib
from nfnet_jax import models
from nfnet_jax import optim
from nfnet_jax import pretrained
from nfnet_jax import train
from nfnet_jax.train import build as build_lib
from nfnet_jax.train import checkpoints
from nfnet_jax.train import init_from
from nfnet_jax.train.step import make_train_step, pmap_train_step

KWARGS = {'depth': (1, 1, 1, 1), 'width': 1, 'stochdepth_rate': 0.0, 'drop_rate': 0.0}
HEAD = 'NF_ResNet/~/linear'


def small_config(**overrides):
  c = train.base_config()
  c.model = 'nf_resnet50'
  c.model_kwargs = ml_collections.ConfigDict(KWARGS)
  c.dataset = 'digits'
  c.batch_size = 16
  c.total_steps = 4
  c.image_size = 32
  c.eval_image_size = 32
  c.augment = 'none'
  c.bf16 = False
  c.ema_decay = 0.9
  c.optimizer.lr = 0.4
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.weight_decay = 1e-3
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 0
  for k, v in overrides.items():
    target = c
    *parents, leaf = k.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = v
  return c


def model_params(num_classes, seed=1, **kwargs):
  net = models.create('nf_resnet50', num_classes=num_classes, **{**KWARGS, **kwargs})
  params, _ = jax.jit(net.init)(jax.random.PRNGKey(seed), np.zeros((1, 32, 32, 3), np.float32))
  return jax.tree.map(np.asarray, params)


def model_shapes(num_classes):
  net = models.create('nf_resnet50', num_classes=num_classes, **KWARGS)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  return jax.eval_shape(net.init, jax.random.PRNGKey(0), images)[0]


def start(config):
  run = train.validate(config)
  model, optimizer, _ = build_lib.build(run)
  init_fn = build_lib.initial_state_fn(run, model, optimizer)
  return init_fn, optimizer


def test_reset_head_loads_the_body_bit_equal_and_a_fresh_head(tmp_path):
  source = model_params(num_classes=5)
  path = str(tmp_path / 'five.npz')
  pretrained.save(path, source)
  config = small_config(init_from=path)        # digits: 10 classes, so the head does not fit
  init_fn, optimizer = start(config)
  lines = []
  state = init_from.initial_state(config, init_fn, optimizer, jax.random.PRNGKey(0),
                                  workdir=str(tmp_path / 'run'), log=lines.append)
  fresh = jax.device_get(init_fn(jax.random.PRNGKey(0)))
  for module, leaves in state.params.items():
    for name, value in leaves.items():
      if module == HEAD:
        np.testing.assert_array_equal(value, fresh.params[module][name])
        assert value.shape[-1] == 10
      else:
        assert value.dtype == source[module][name].dtype
        np.testing.assert_array_equal(value, source[module][name])
        np.testing.assert_array_equal(state.ema_params[module][name], source[module][name])
  assert int(state.step) == 0
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(state.opt_state)
             if np.ndim(x) > 0)                # fresh momentum
  report = json.loads((tmp_path / 'run' / 'init_from.json').read_text())
  assert sorted(report['reset']) == [f'{HEAD}/b', f'{HEAD}/w']
  assert '(512, 5)' in report['reset'][f'{HEAD}/w'] and '(512, 10)' in report['reset'][f'{HEAD}/w']
  assert len(report['loaded']) == len(jax.tree.leaves(source)) - 2 and report['unused'] == {}
  assert lines[0].startswith(f'init_from {path}: loaded {len(report["loaded"])} params, reset 2')
  assert any(f'reset   {HEAD}/w' in line for line in lines)


def test_keep_and_reset_heads_and_unused_params(tmp_path):
  source = model_params(num_classes=10)
  source['extra/~/module'] = {'w': np.ones((3, 3), np.float32)}
  path = str(tmp_path / 'ten.npz')
  pretrained.save(path, source)
  abstract = model_shapes(num_classes=10)
  loaded, report = init_from.match(source, abstract, init_head='keep')
  np.testing.assert_array_equal(loaded[f'{HEAD}/w'], source[HEAD]['w'])
  assert report.unused == {'extra/~/module/w': (3, 3)} and not report.reset
  _, report = init_from.match(source, abstract, init_head='reset')
  assert sorted(report.reset) == [f'{HEAD}/b', f'{HEAD}/w']
  with pytest.raises(init_from.InitFromError, match=f'{HEAD}/w: the file has .512, 10., the model .512, 3.'):
    init_from.match(source, model_shapes(num_classes=3), init_head='keep')


def test_misfitting_file_is_refused_with_names_before_compiling(tmp_path):
  wide = model_params(num_classes=10, width=2)
  del wide['NF_ResNet/~/initial_conv']
  path = str(tmp_path / 'wide.npz')
  pretrained.save(path, wide)
  config = small_config(init_from=path)
  init_fn, optimizer = start(config)
  with pytest.raises(init_from.InitFromError) as e:
    init_from.initial_state(config, init_fn, optimizer, jax.random.PRNGKey(0))
  message = str(e.value)
  assert 'NF_ResNet/~/initial_conv/w: not in the file' in message
  assert "NF_ResNet/~/nf_res_block/~/conv0/w: the file has" in message
  assert isinstance(e.value, train.ConfigError)
  assert init_fn._cache_size() == 0           # nothing was compiled


@pytest.mark.slow
def test_freezing_leaves_frozen_params_bit_identical_and_stateless():
  config = small_config(trainable=r'nf_res_block_3/,/~/linear/', **{'optimizer.clip_exclude': 'none'})
  run = train.validate(config, device_count=1)
  model, optimizer, schedule = build_lib.build(run)
  state = jax.device_get(build_lib.initial_state_fn(run, model, optimizer)(jax.random.PRNGKey(0)))
  step = pmap_train_step(make_train_step(
      model, optimizer, schedule=schedule, num_classes=10, label_smoothing=0.1, bf16=False,
      ema_decay=0.9, augment='none'), devices=jax.local_devices()[:1])
  batches = data_lib.train_iterator('digits', data_dir=None, global_batch_size=16, image_size=32,
                                    augment='none', seed=0, local_devices=1)
  replicated = jax.tree.map(lambda x: np.asarray(x)[None], state)
  for _ in range(3):
    replicated, metrics = step(replicated, next(batches))
  after = jax.tree.map(lambda x: np.asarray(x)[0], replicated)
  mask = optim.trainable_mask(state.params, config.trainable)
  flat_mask = dict(jax.tree_util.tree_leaves_with_path(mask))
  moved = 0
  for path, before in jax.tree_util.tree_leaves_with_path(state.params):
    now = after.params
    for key in path:
      now = now[key.key]
    if flat_mask[path] and np.ndim(before) >= 2:
      moved += not np.array_equal(now, before)
    elif not flat_mask[path]:
      assert np.array_equal(now, before), jax.tree_util.keystr(path)
  # Every trainable weight moved (AGC-sized steps on gains at 1.0 can round away in float32).
  trainable = [p for p, v in jax.tree_util.tree_leaves_with_path(state.params)
               if flat_mask[p] and np.ndim(v) >= 2]
  assert moved == len(trainable) == 5
  # Momentum is kept for the trainable params only.
  shapes = sorted(np.shape(x) for x in jax.tree.leaves(after.opt_state) if np.ndim(x) > 1)
  assert shapes == sorted(np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(state.params)
                          if flat_mask[p] and np.ndim(v) > 1)
  assert 0.0 <= float(metrics['clip_fraction'][0]) <= 1.0   # AGC runs on the trainable params


def test_bad_configs_fail_fast(tmp_path):
  cases = {
      'init_from': (str(tmp_path / 'nope.npz'), 'does not exist'),
      'init_head': ('fresh', "must be one of \\['auto', 'reset', 'keep'\\]"),
      'trainable': ('NF_ResNet/~/lineer/', "match no parameter"),
      'dataset': ('', 'no dataset given'),
      'folder_val_fraction': (1.5, 'must be in \\(0, 1\\)'),
  }
  (tmp_path / 'imgs' / 'a').mkdir(parents=True)
  Image.new('L', (8, 8)).save(tmp_path / 'imgs' / 'a' / '0.png')
  Image.new('L', (8, 8)).save(tmp_path / 'imgs' / 'a' / '1.png')
  for key, (value, message) in cases.items():
    extra = {'dataset': f'folder:{tmp_path}/imgs'} if key == 'folder_val_fraction' else {}
    with pytest.raises(train.ConfigError, match=message):
      train.validate(small_config(**{key: value, **extra}))
  pretrained.save(str(tmp_path / 'p.npz'), model_params(10))
  with pytest.raises(train.ConfigError, match='init_from_ema=True needs a training run'):
    train.validate(small_config(init_from=str(tmp_path / 'p.npz'), init_from_ema=True))
  with pytest.raises(train.ConfigError, match='without checkpoints'):
    train.validate(small_config(init_from=str(tmp_path)))


def write_folder(root, classes, per_class, seed=0):
  rng = np.random.default_rng(seed)
  for k, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      pixels = np.clip(rng.normal(60 * k + 40, 20, (12 + i % 3, 14, 3)), 0, 255).astype(np.uint8)
      ext = 'png' if i % 2 else 'jpg'
      Image.fromarray(pixels).save(os.path.join(root, name, f'{i}.{ext}'))


@pytest.mark.slow
def test_fine_tune_from_an_exported_run_then_resume(tmp_path, capsys):
  pre = str(tmp_path / 'pre')
  train.train_and_evaluate(small_config(), pre)
  npz = str(tmp_path / 'pre.npz')
  checkpoints.export(pre, npz, ema=True)
  images = str(tmp_path / 'images')
  write_folder(images, ['rock', 'paper', 'scissors'], 8)
  work = str(tmp_path / 'fine')
  config = small_config(dataset=f'folder:{images}', init_from=npz, trainable='nf_res_block_3/,linear',
                        folder_val_fraction=0.25, eval_every_steps=4, total_steps=4)
  result = train.train_and_evaluate(config, work)
  out = capsys.readouterr().out
  assert f'init_from {npz}: loaded' in out and 'reset 2' in out
  assert result['eval']['val']['params']['num_examples'] == 6 and result['step'] == 4
  exported = pretrained.load(npz)
  np.testing.assert_array_equal(result['state'].params['NF_ResNet/~/initial_conv']['w'],
                                exported['NF_ResNet/~/initial_conv']['w'])   # frozen and loaded
  # Resuming the fine-tuning run takes its own checkpoint, not init_from.
  config.total_steps = 6   # a longer schedule: a deliberate change
  result = train.train_and_evaluate(config, work, allow_config_change=True)
  out = capsys.readouterr().out
  assert 'Resuming from the checkpoint at step 4' in out and 'total_steps: 4 -> 6' in out
  assert result['step'] == 6
  # The class names are stored with the run: classify and evaluate print them.
  name, net, params, model_state, names, size = eval_lib.load_classifier(workdir=work)
  assert names == ['paper', 'rock', 'scissors']
  top = eval_lib.classify_files([os.path.join(images, 'rock', '0.jpg')], net, params, model_state,
                                class_names=names, image_size=32, top_k=3)
  (tops, error), = top
  assert error is None and sorted(n for n, _ in tops) == names
  evaluated = eval_lib.evaluate_run(config, workdir=work)
  assert evaluated['class_names'] == names
  assert evaluated['evals']['val']['params']['num_examples'] == 6
  # A run's workdir with its EMA params is a source too.
  work2 = str(tmp_path / 'fine2')
  train.train_and_evaluate(small_config(init_from=pre, init_from_ema=True, total_steps=2), work2)
  report = json.loads(open(os.path.join(work2, 'init_from.json')).read())
  assert 'EMA params' in report['source'] and report['reset'] == {}


def test_deepmind_f0_layout_fits_nfnet_f0_with_a_new_head():
  """DeepMind's released F0 layout (1000 classes) into nfnet_f0 with 7 classes: 231 loaded, 2 reset."""
  import official_layouts  # tests/official_layouts.py
  layout = official_layouts.load('nfnet_F0')['params']
  released = {m: {n: np.broadcast_to(np.float32(0), s) for n, s in d.items()}
              for m, d in layout.items()}
  net = models.create('nfnet_f0', num_classes=7)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  loaded, report = init_from.match(released, jax.eval_shape(net.init, jax.random.PRNGKey(0), images)[0])
  assert len(loaded) == 231 and sorted(report.reset) == ['NFNet/~/linear/b', 'NFNet/~/linear/w']
  assert '(3072, 1000)' in report.reset['NFNet/~/linear/w'] and not report.unused
