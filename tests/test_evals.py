"""Eval sets as papers report them: val + ImageNet-ReaL + ImageNet-V2 in one run, resolution sweeps,
per-example predictions (1 and 3 devices, 2 processes), per-class accuracy and the confusion matrix.

The ImageNet sets are tfds's own imagenet2012, imagenet2012_real and imagenet_v2 builders run on
miniature files in their official layouts (tests/mini_imagenet.py)."""

import csv
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import mini_imagenet as mi
from nfnet_jax import data, evals
from nfnet_jax.data.imagenet import prepare_imagenet
from nfnet_jax.evaluate import evaluate_run, evaluate_split
from nfnet_jax.train import Checkpointer, ConfigError, train_and_evaluate, validate
from nfnet_jax.train.build import build, initial_state_fn
from nfnet_jax.train.loop import config_json
from nfnet_jax.train.writers import read_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {'depth': (1, 1, 1, 1), 'width': 1, 'stochdepth_rate': 0.0, 'drop_rate': 0.0}


def load_config(name, *args):
  spec = importlib.util.spec_from_file_location(name, REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def imagenet_config(data_dir):
  """configs/nfnet.py:F0 as a user runs it (batch 4096, evals val/real/v2) with a tiny model at 32 px."""
  config = load_config('nfnet', 'F0')
  config.model, config.model_kwargs = 'nf_resnet50', TINY
  config.data_dir = data_dir
  config.image_size = config.eval_image_size = 32
  config.eval_batch_size = 4
  config.bf16 = False
  return config


def direct_predictions(model, params, model_state, data_dir, dataset='imagenet2012', split='validation',
                       image_size=32):
  """{file or index: top-5 classes} from one unpadded batch, without pmap."""
  (batch,) = list(data.eval_iterator(dataset, data_dir=data_dir, split=split, global_batch_size=64,
                                     image_size=image_size, local_devices=1))
  mask = batch['mask'][0]
  outputs, _ = jax.jit(lambda p, s, x: model.apply(p, s, None, x, is_training=False))(
      params, model_state, batch['images'][0][mask])
  top5 = np.argsort(-np.asarray(outputs['logits']), axis=1)[:, :5]
  return {f.decode(): t for f, t in zip(batch['file'][0][mask], top5)}


def real_lists(preds):
  """Hand-made ReaL label lists by validation file: multi-label hits and misses, single-label hits and
  misses, and two empty sets."""
  lists = []
  for i in range(len(preds)):
    top = preds[f'ILSVRC2012_val_{i + 1:08d}.JPEG']
    kind = i % 5
    lists.append([[int(top[0]), int(top[3])], [int(top[2])], [int(top[0])], [],
                  [int(top[1]), int(top[4])]][kind])
  return lists


@pytest.fixture(scope='module')
def imagenet_run(mini_imagenet, tmp_path_factory):
  """A data dir with the miniature imagenet2012, imagenet2012_real and imagenet_v2, a workdir with one
  checkpoint of a tiny 1000-class model, its direct predictions and the ReaL lists (also as JSON)."""
  root = tmp_path_factory.mktemp('evalsets')
  data_dir = str(root / 'data')
  prepare_imagenet(mini_imagenet.manual_dir, data_dir, log=lambda _: None)
  config = imagenet_config(data_dir)
  run = validate(config, for_training=False)
  model, optimizer, _ = build(run)
  state = jax.device_get(initial_state_fn(run, model, optimizer)(jax.random.PRNGKey(3)))
  state = state._replace(ema_params=jax.tree.map(lambda x: x * 0.9, state.params))
  workdir = root / 'run'
  checkpointer = Checkpointer(str(workdir))
  checkpointer.save(state, config_json(config))
  checkpointer.close()
  preds = direct_predictions(model, state.ema_params, state.ema_model_state, data_dir)
  lists = real_lists(preds)
  mi.prepare_real(data_dir, mini_imagenet.manual_dir, lists)
  (root / 'real.json').write_text(json.dumps(lists))
  names = data.get_info('imagenet2012', data_dir).class_names
  ids = [names.index(s) for s in mini_imagenet.synsets]
  mi.prepare_v2(data_dir, [(ids[c], c, len(ids)) for c in range(len(ids)) for _ in range(2)])
  config_file = root / 'tiny_nfnet.py'   # imagenet_config as a config file, for scripts/evaluate.py
  config_file.write_text(CONFIG_FILE.format(repo=str(REPO)))
  return dict(data_dir=data_dir, workdir=workdir, config=config, model=model, state=state, preds=preds,
              lists=lists, real_json=str(root / 'real.json'), config_file=str(config_file))


CONFIG_FILE = '''import sys
sys.path.insert(0, {repo!r} + '/tests')
import test_evals


def get_config():
  return test_evals.imagenet_config(None)
'''


def test_real_top1_is_the_prediction_in_the_label_set_both_from_tfds_and_from_the_json(imagenet_run):
  r = imagenet_run
  config = imagenet_config(r['data_dir'])
  config.evals.real_json = evals.eval_set(real_labels=r['real_json'])
  result = evaluate_run(config, workdir=str(r['workdir']), evals=['real', 'real_json'])
  scored = [(f'ILSVRC2012_val_{i + 1:08d}.JPEG', set(s)) for i, s in enumerate(r['lists']) if s]
  top1 = sum(int(r['preds'][f][0]) in s for f, s in scored) / len(scored)
  top5 = sum(bool(set(map(int, r['preds'][f])) & s) for f, s in scored) / len(scored)
  assert 0 < top1 < top5 <= 1                       # the hand-made sets have hits and misses
  for name in ('real', 'real_json'):
    ema = result['evals'][name]['ema_params']
    assert (ema['num_examples'], ema['num_excluded']) == (8, 2)
    assert ema['top1'] == pytest.approx(top1) and ema['top5'] == pytest.approx(top5)
  assert result['evals']['real']['dataset'] == 'imagenet2012_real'
  assert result['evals']['real_json']['dataset'] == 'imagenet2012'
  assert result['evals']['real']['params'] == result['evals']['real_json']['params']


def test_real_labels_json_of_the_wrong_length_is_refused(imagenet_run, tmp_path):
  r = imagenet_run
  short = tmp_path / 'short.json'
  short.write_text(json.dumps(r['lists'][:9]))
  config = imagenet_config(r['data_dir'])
  config.evals.real.real_labels = str(short)
  with pytest.raises(ConfigError, match=r'has 9 label lists but the imagenet2012 validation split has 10'):
    evaluate_run(config, workdir=str(r['workdir']), evals=['real'])


def test_missing_optional_sets_are_skipped_and_a_requested_one_says_how_to_prepare_it(mini_imagenet):
  config = imagenet_config(mini_imagenet.data_dir)   # imagenet2012 only
  lines = []
  sets = evals.resolve(config, test_image_size=256, min_image_size=32, num_classes=1000, log=lines.append)
  assert [s.name for s in sets] == ['val'] and len(lines) == 2
  assert lines[0].startswith("Skipping eval set 'real': imagenet2012_real is not prepared")
  assert lines[1].startswith("Skipping eval set 'v2': imagenet_v2/matched-frequency is not prepared")
  with pytest.raises(evals.EvalSetError, match=r"eval set 'v2'.*tfds build imagenet_v2/matched-frequency"):
    evals.resolve(config, test_image_size=256, min_image_size=32, num_classes=1000, names=['v2'], log=print)
  with pytest.raises(evals.EvalSetError, match=r"eval set 'real'.*real_labels=PATH"):
    evals.resolve(config, test_image_size=256, min_image_size=32, num_classes=1000, names=['real'], log=print)


def test_evaluation_ignores_training_only_settings_and_pads_any_eval_batch(mini_imagenet):
  config = imagenet_config(mini_imagenet.data_dir)   # batch_size 4096 > 40 training images
  with pytest.raises(ConfigError, match='batch_size=4096 exceeds the 40 training examples'):
    validate(config)
  validate(config, for_training=False)
  config.batch_size, config.eval_batch_size = 24, 50
  validate(config, device_count=3)                   # 50 is not a multiple of 3: padded, not refused


@pytest.mark.slow
def test_one_training_run_evaluates_val_real_and_v2(imagenet_run, tmp_path):
  config = imagenet_config(imagenet_run['data_dir'])
  config.batch_size, config.total_steps, config.optimizer.warmup_epochs = 8, 2, 0.1
  config.augment, config.eval_every_steps = 'none', 2
  result = train_and_evaluate(config, str(tmp_path))
  assert set(result['eval']) == {'val', 'real', 'v2'}
  (row,) = [r for r in read_jsonl(tmp_path / 'metrics.jsonl') if 'eval/val/params/top1' in r]
  assert row['step'] == 2
  for name, n in (('val', 10), ('real', 8), ('v2', 20)):
    for which in ('params', 'ema_params'):
      assert row[f'eval/{name}/{which}/num_examples'] == n
      assert 0 <= row[f'eval/{name}/{which}/top1'] <= row[f'eval/{name}/{which}/top5'] <= 1
  assert row['eval/real/params/num_excluded'] == 2 and 'eval/v2/params/loss' in row


# Digits: 10 classes, so per-class tables; a fast model at 32 px. -----------------------------------

@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  config = load_config('quickstart')
  config.batch_size, config.eval_batch_size = 32, 64
  run = validate(config)
  model, optimizer, _ = build(run)
  state = jax.device_get(initial_state_fn(run, model, optimizer)(jax.random.PRNGKey(1)))
  workdir = tmp_path_factory.mktemp('digits_run')
  checkpointer = Checkpointer(str(workdir))
  checkpointer.save(state, config_json(config))
  checkpointer.close()
  return workdir, config, model, state


@pytest.mark.slow
def test_resolution_sweep_scores_each_size_and_writes_a_table_and_plot(digits_run, tmp_path):
  workdir, config, model, state = digits_run
  out = tmp_path / 'sweep.json'
  result = evaluate_run(config, workdir=str(workdir), image_sizes=[32, 48], out=str(out))
  assert list(result['evals']) == ['val@32', 'val@48']
  for size in (32, 48):
    want = evaluate_split(model, state.params, state.model_state, dataset='digits', data_dir=None,
                          split='validation', batch_size=64, image_size=size)
    got = result['evals'][f'val@{size}']
    assert got['image_size'] == size and got['params']['top1'] == pytest.approx(want['top1'])
  table = (tmp_path / 'sweep_sweep.txt').read_text().splitlines()
  assert table[0] == '| test size | val/params | val/ema_params |'
  assert table[3].startswith('| 48 | ') and f'{100 * result["evals"]["val@48"]["params"]["top1"]:.2f}' in table[3]
  assert (tmp_path / 'sweep_sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_per_class_accuracy_and_confusion_matrix_equal_numpy(digits_run, tmp_path):
  workdir, config, model, state = digits_run
  (batch,) = list(data.eval_iterator('digits', data_dir=None, split='validation', global_batch_size=300,
                                     image_size=32, local_devices=1))
  outputs, _ = jax.jit(lambda p, s, x: model.apply(p, s, None, x, is_training=False))(
      state.ema_params, state.ema_model_state, batch['images'][0])
  labels, predicted = batch['labels'][0], np.asarray(outputs['logits']).argmax(1)
  confusion = np.zeros((10, 10), int)
  for t, p in zip(labels, predicted):
    confusion[t, p] += 1
  result = evaluate_run(config, workdir=str(workdir), predictions=str(tmp_path / 'p.jsonl'))
  rows = [json.loads(line) for line in (tmp_path / 'p.jsonl').read_text().splitlines()]
  assert [r['index'] for r in rows] == list(range(300)) and 'file' not in rows[0]
  assert [r['label'] for r in rows] == labels.tolist()
  assert [r['top5'][0] for r in rows] == predicted.tolist()
  np.testing.assert_array_equal(evals.confusion_matrix(labels, predicted, 10), confusion)
  with open(tmp_path / 'p.per_class.csv') as f:
    table = list(csv.DictReader(f))
  for c, row in enumerate(table):
    assert (int(row['examples']), int(row['correct'])) == (confusion[c].sum(), confusion[c, c])
    assert float(row['top1']) == pytest.approx(confusion[c, c] / confusion[c].sum(), abs=1e-4)
  assert (tmp_path / 'p.confusion.png').read_bytes()[:4] == b'\x89PNG'
  assert result['evals']['val']['files']['confusion_matrix'] == str(tmp_path / 'p.confusion.png')


# Predictions whatever the devices and processes (scripts/evaluate.py, real subprocesses). ---------

def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch_evaluate(r, out, *, devices, extra=()):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  flags = [f'--config={r["config_file"]}', f'--workdir={r["workdir"]}', '--evals=val,real,v2',
           f'--predictions={out}', f'--config.data_dir={r["data_dir"]}', '--config.eval_batch_size=5']
  return subprocess.Popen([sys.executable, 'scripts/evaluate.py', *flags, *extra], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_predictions_are_complete_and_in_order_on_1_and_3_devices_and_2_processes(imagenet_run, tmp_path):
  r = imagenet_run
  outputs = {}
  for devices in (1, 3):        # eval_batch_size 5 on 3 devices: padded to 6 rows
    proc = launch_evaluate(r, tmp_path / f'd{devices}.jsonl', devices=devices)
    log = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, log
    outputs[devices] = log
  port = free_port()
  procs = [launch_evaluate(r, tmp_path / 'p2.jsonl', devices=2, extra=(
      f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}')) for i in range(2)]
  logs = [p.communicate(timeout=400)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  assert '| val | imagenet2012 validation | 32 |' in outputs[1] and '| v2 |' in outputs[3]
  files = {n: sorted(tmp_path.glob(f'{n}.*.jsonl')) for n in ('d1', 'd3', 'p2')}
  assert [f.name for f in files['d1']] == ['d1.real.jsonl', 'd1.v2.jsonl', 'd1.val.jsonl']
  val_files = {i: f for i, f in enumerate(s.decode() for s in direct_files(r['data_dir']))}
  for name, n in (('val', 10), ('real', 10), ('v2', 20)):
    runs = [[json.loads(line) for line in (tmp_path / f'{k}.{name}.jsonl').read_text().splitlines()]
            for k in ('d1', 'd3', 'p2')]
    for rows in runs:
      assert [row['index'] for row in rows] == list(range(n))
      assert [row['label'] for row in rows] == [row['label'] for row in runs[0]]
      assert [(row['file'], row['top5']) for row in rows] == [(row['file'], row['top5']) for row in runs[0]]
      for row, first in zip(rows, runs[0]):
        np.testing.assert_allclose(row['top5_prob'], first['top5_prob'], atol=1e-5)
    if name == 'val':
      assert [row['file'] for row in runs[0]] == [val_files[i] for i in range(n)]
      assert {row['file']: row['top5'] for row in runs[0]} == {
          f: t.tolist() for f, t in r['preds'].items()}
    if name == 'real':
      assert {row['file']: row['label'] for row in runs[0]} == {
          f'ILSVRC2012_val_{i + 1:08d}.JPEG': sorted(s) for i, s in enumerate(r['lists'])}


def direct_files(data_dir):
  """imagenet2012 validation file names in split order, read with tfds directly."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = tfds.builder('imagenet2012', data_dir=data_dir).as_dataset(split='validation', shuffle_files=False)
  return [ex['file_name'] for ex in tfds.as_numpy(ds)]
