"""Signal propagation plots: the produced numbers show the NF-ResNet paper's qualitative claims."""
import csv
import json

import numpy as np
import pytest

from nfnet_jax import spp

ALPHA = 0.2
SMALL = 'depth=(3,4,2,1),width=1'  # reduced NF-ResNet-50 shape: same blocks, fewer of them
MODELS = [f'nf_resnet50:{SMALL}', f'nf_resnet50:{SMALL},use_ws=False', f'resnet50:{SMALL}']


@pytest.fixture(scope='module')
def produced(tmp_path_factory):
  out = tmp_path_factory.mktemp('spp')
  paths = spp.run(MODELS, str(out), image_size=48, batch=8, seed=0, log=lambda _: None)
  with open(paths['json']) as f:
    data = json.load(f)
  return paths, {m['label']: {k: np.asarray(v) for k, v in m.items()
                              if k in spp.STAT_KEYS + ('transition',)}
                 for m in data['models']}, data


def test_files_written(produced):
  paths, _, data = produced
  with open(paths['png'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(paths['csv']) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(MODELS) * 10
  assert [m['label'] for m in data['models']] == MODELS
  assert data['meta']['batch'] == 8 and data['meta']['input'] == 'N(0, 1) noise'
  # Measurements at init switch stochastic depth off and give SkipInit gain 1.
  assert data['models'][0]['overrides']['skipinit_gain'] == 1.0
  assert data['models'][0]['overrides']['stochdepth_rate'] == 0.0
  first = [r for r in rows if r['label'] == MODELS[0]]
  np.testing.assert_allclose([float(r['avg_var']) for r in first],
                             data['models'][0]['avg_var'], rtol=1e-6)


def test_scaled_ws_keeps_mean_small_plain_convs_let_it_grow(produced):
  _, stats, _ = produced
  ws, plain = stats[MODELS[0]]['avg_sq_mean'], stats[MODELS[1]]['avg_sq_mean']
  assert np.all(ws < 0.1)
  assert np.all(plain > 10 * ws.max())
  assert plain[8] > 2 * plain[0]  # mean shift grows with depth


def test_nf_variance_grows_linearly_within_stage_and_resets(produced):
  _, stats, _ = produced
  var, trans = stats[MODELS[0]]['avg_var'], stats[MODELS[0]]['transition']
  starts = np.flatnonzero(trans)
  assert starts.tolist() == [0, 3, 7, 9]
  for s in starts[1:]:
    assert var[s] < var[s - 1]  # reset after each transition
    assert abs(var[s] - (1 + ALPHA ** 2)) < 0.3
  steps = np.diff(var[3:7])  # the longest stage: 4 blocks
  assert np.all(steps > 0)
  assert 0.3 * ALPHA ** 2 < steps.mean() < 1.5 * ALPHA ** 2
  assert steps.max() < 3 * steps.min()  # about linear: steady increments


def test_bn_relu_conv_variance_resets_at_transitions(produced):
  _, stats, _ = produced
  var, trans = stats[MODELS[2]]['avg_var'], stats[MODELS[2]]['transition']
  for s in np.flatnonzero(trans)[1:]:
    assert var[s] < var[s - 1]
  assert np.all(np.diff(var[3:7]) > 0)  # and grows within a stage


def test_parse_model_and_bad_input():
  c = spp.parse_model('resnet600:block_order=relu_bn_conv,depth=(1,2,2,1),use_se=true')
  assert c.name == 'resnet600'
  assert dict(c.overrides) == {'block_order': 'relu_bn_conv', 'depth': (1, 2, 2, 1),
                               'use_se': True}
  with pytest.raises(ValueError, match='Unknown model'):
    spp.parse_model('resnet7')
  with pytest.raises(ValueError, match='key=value'):
    spp.parse_model('resnet50:oops')
  with pytest.raises(ValueError, match='Unknown option'):
    spp.run(['nf_resnet50:bogus=1'], '/tmp/unused')
  with pytest.raises(ValueError, match='exactly one'):
    spp.run(['nf_resnet50', 'resnet50'], '/tmp/unused', pretrained='/nonexistent.npz')


def test_measures_weights_from_a_params_file(tmp_path):
  import jax
  from nfnet_jax import models, pretrained
  choice = 'nf_resnet50:depth=(2,1,1,1),width=1'
  model = models.create('nf_resnet50', depth=(2, 1, 1, 1), width=1)
  images = spp.gaussian_images(4, 32, seed=1)
  params, _ = model.init(jax.random.PRNGKey(0), images)
  pretrained.save(tmp_path / 'w.npz', params)  # released init: SkipInit gains are 0
  paths = spp.run([choice], str(tmp_path), image_size=32, batch=4,
                  pretrained=str(tmp_path / 'w.npz'), log=lambda _: None)
  with open(paths['json']) as f:
    data = json.load(f)
  assert data['meta']['weights'] == str(tmp_path / 'w.npz')
  rec = data['models'][0]
  assert 'skipinit_gain' not in rec['overrides']
  # With g = 0 a non-transition block passes its input through unchanged.
  assert rec['transition'][:2] == [True, False]
  np.testing.assert_allclose(rec['avg_var'][1], rec['avg_var'][0], rtol=1e-6)
  assert rec['res_avg_var'][1] > 0.1  # although its residual branch is active
