"""The path layer: URLs survive every path function unchanged; reads and writes on local disk and
on TensorFlow's in-memory filesystem (ram://, served by tf.io.gfile); every writer goes through it."""

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from nfnet_jax import paths
from nfnet_jax import pretrained
from nfnet_jax.train import checkpoints

URLS = ['gs://bucket/run', 'gs://bucket/deep/er/run', 's3://b/x', 'ram://x/y', 'hdfs://nn:8020/a/b']


@pytest.mark.parametrize('url', URLS)
def test_urls_survive_every_path_function(url):
  assert paths.is_url(url) and paths.scheme(url) == url.split('://')[0]
  assert paths.absolute(url) == url
  assert paths.expand(url) == url
  assert paths.join(url, 'checkpoints') == url + '/checkpoints'
  assert paths.join(url, 'a', 'b.json') == url + '/a/b.json'
  assert paths.dirname(paths.join(url, 'eval.json')) == url
  assert paths.basename(paths.join(url, 'eval.json')) == 'eval.json'
  assert checkpoints.checkpoint_dir(url) == url + '/checkpoints'


def test_a_bucket_root_is_its_own_dirname():
  assert paths.dirname('gs://bucket') == 'gs://bucket'
  assert paths.dirname('gs://bucket/x') == 'gs://bucket'


def test_local_paths_behave_as_before(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert not paths.is_url('runs/q') and paths.scheme('/abs/p') is None
  assert paths.absolute('runs/q') == os.path.join(str(tmp_path), 'runs', 'q')
  assert paths.expand('~/x') == os.path.expanduser('~/x')
  assert checkpoints.checkpoint_dir('runs/q') == os.path.join(str(tmp_path), 'runs', 'q', 'checkpoints')


@pytest.fixture(params=['local', 'ram'])
def root(request, tmp_path):
  return str(tmp_path / 'root') if request.param == 'local' else f'ram://{uuid.uuid4().hex}/root'


def test_atomic_writes_reads_appends_and_listing(root):
  target = paths.join(root, 'sub', 'file.bin')
  paths.write_bytes(target, b'first')
  paths.write_bytes(target, b'second')           # overwrites
  assert paths.read_bytes(target) == b'second'
  assert paths.listdir(paths.join(root, 'sub')) == ['file.bin']   # no temporary file left behind
  log = paths.join(root, 'metrics.jsonl')
  paths.append_text(log, 'a\n')
  paths.append_text(log, 'b\n')
  assert paths.read_text(log) == 'a\nb\n'
  assert paths.exists(log) and paths.isdir(root) and not paths.exists(paths.join(root, 'nope'))
  paths.remove(log)
  assert not paths.exists(log)
  with pytest.raises(FileNotFoundError, match='nope'):
    paths.read_bytes(paths.join(root, 'nope'))


def test_params_files_metrics_and_eval_json_on_an_url(root):
  from nfnet_jax import evaluate
  from nfnet_jax.train.writers import MetricWriter, read_jsonl
  params = {'net/conv': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}}
  pretrained.save(paths.join(root, 'p.npz'), params)
  np.testing.assert_array_equal(pretrained.load(paths.join(root, 'p.npz'))['net/conv']['w'],
                                params['net/conv']['w'])
  writer = MetricWriter(paths.join(root, 'run'))
  writer.write(1, {'loss': 2.0}, prefix='train/')
  writer.write(2, {'loss': 1.0}, prefix='train/')
  writer.close()
  assert read_jsonl(paths.join(root, 'run', 'metrics.jsonl')) == [
      {'step': 1, 'train/loss': 2.0}, {'step': 2, 'train/loss': 1.0}]
  assert paths.listdir(paths.join(root, 'run', 'tensorboard'))   # an event file
  evaluate.write_json({'top1': 0.5}, paths.join(root, 'out', 'eval.json'))
  assert paths.read_text(paths.join(root, 'out', 'eval.json')) == '{\n  "top1": 0.5\n}\n'


def test_importing_the_path_layer_and_pretrained_loads_no_tensorflow():
  code = ('import sys, nfnet_jax.paths, nfnet_jax.pretrained; '
          'nfnet_jax.paths.exists("."); '
          'sys.exit(int("tensorflow" in sys.modules))')
  assert subprocess.run([sys.executable, '-c', code]).returncode == 0
