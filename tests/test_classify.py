"""classify: every file classified or reported (name + reason); NaN weights refused; arguments checked."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

import train_subprocess as ts
from nfnet_jax import evaluate, pretrained
from nfnet_jax.train import build as build_lib
from nfnet_jax.train import checkpoints, validate
from nfnet_jax.train.loop import config_json

REPO = pathlib.Path(__file__).resolve().parents[1]


def quickstart():
  spec = importlib.util.spec_from_file_location('quickstart', REPO / 'configs' / 'quickstart.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A workdir holding the initial state of quickstart's model as its checkpoint."""
  workdir = tmp_path_factory.mktemp('run')
  config = quickstart()
  run = validate(config)
  model, optimizer, _ = build_lib.build(run)
  state = jax.device_get(build_lib.initial_state_fn(run, model, optimizer)(jax.random.PRNGKey(0)))
  ckpt = checkpoints.Checkpointer(str(workdir))
  ckpt.save(state, config_json(config))
  ckpt.close()
  return workdir, state


def test_bad_files_are_reported_by_name_and_the_others_classified(run_dir, tmp_path):
  workdir, _ = run_dir
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'good.png')
  Image.fromarray(pixels).save(tmp_path / 'good.jpg')
  Image.fromarray(pixels).save(tmp_path / 'scan.tiff')
  data = (tmp_path / 'good.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 3])
  (tmp_path / 'notes.txt').write_text('not an image')
  paths = [tmp_path / n for n in ('good.png', 'cut.png', 'scan.tiff', 'notes.txt', 'missing.png',
                                  'good.jpg')]
  _, net, params, model_state, names, size = evaluate.load_classifier(workdir=str(workdir))
  results = evaluate.classify_files([str(p) for p in paths], net, params, model_state,
                                    class_names=names, image_size=size, top_k=3)
  (good, e0), (_, e1), (_, e2), (_, e3), (_, e4), (jpg, e5) = results
  assert e0 is None and e5 is None and len(good) == 3 and len(jpg) == 3
  assert abs(sum(p for _, p in good) - 1) < 1 and all(0 <= p <= 1 for _, p in good)
  assert e1.startswith('cannot decode this PNG file')
  assert e2.startswith('unsupported image format TIFF; convert it to one of JPEG, PNG, GIF, BMP')
  assert e3.startswith('unsupported image format (unknown, first bytes')
  assert e4 == 'No such file or directory'
  with pytest.raises(ValueError, match='--image_size=4 is too small for nf_resnet50: it needs at least 32'):
    evaluate.load_classifier(workdir=str(workdir), image_size=4)


def test_all_nan_params_are_refused_instead_of_scored(run_dir, tmp_path):
  _, state = run_dir
  nan = jax.tree.map(lambda x: np.full_like(x, np.nan), state.params)
  pretrained.save(tmp_path / 'nan.npz', nan)
  with pytest.raises(ValueError, match=r'nan.npz \(params\): \d+ of \d+ param arrays hold NaN or Inf'):
    evaluate.evaluate_run(quickstart(), pretrained=str(tmp_path / 'nan.npz'))


def test_classify_script_exits_nonzero_naming_the_failed_file(run_dir, tmp_path):
  workdir, _ = run_dir
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'ok.png')
  (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8\xff garbage')
  code, out = ts.run_script('classify.py', f'--workdir={workdir}', '--top_k=2', tmp_path / 'ok.png',
                            tmp_path / 'bad.jpg')
  assert code == 1 and 'Traceback' not in out, out
  assert f'error: {tmp_path / "bad.jpg"}: cannot decode this JPEG file' in out
  assert f'{tmp_path / "ok.png"}\n' in out and 'error: 1 of 2 images could not be classified' in out
  code, out = ts.run_script('classify.py', f'--workdir={workdir}', '--top_k=-3', tmp_path / 'ok.png')
  assert code != 0 and '--top_k=-3 must be >= 1' in out
