"""SkipInit and Fixup ResNets: residual branches silent at init, which parameters learn first, Fixup's
init scales, and signal propagation at init (layouts: test_layout.py; FLOPs: test_flops.py)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import models
from nfnet_jax.models import fixup_resnet, skipinit_resnet

DEPTH = (1, 1, 5, 1)
X = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3)) * 2.0 + 0.5
LABELS = jnp.arange(4) % 5
CLASSES = [skipinit_resnet.SkipInit_ResNet, fixup_resnet.FixUp_ResNet]


@pytest.fixture(scope='module', params=CLASSES, ids=lambda c: c.__name__)
def tiny(request):
  """(class, jitted apply → (logits, signal), jitted grad, params): one compile of each per class.
  The classifier is random here; tests zero it to get the default init."""
  cls = request.param
  model = hk.transform_with_state(lambda x: cls(
      num_classes=5, depth=DEPTH, width=1, stochdepth_rate=0.0,
      fc_init=hk.initializers.RandomNormal(0.1))(x, True, True))
  params, state = jax.jit(model.init)(jax.random.PRNGKey(1), X)
  forward = lambda p: model.apply(p, state, None, X)[0]

  def loss(p):
    return -jnp.mean(jax.nn.log_softmax(forward(p)['logits'])[jnp.arange(4), LABELS])
  return cls, jax.jit(forward), jax.jit(jax.grad(loss)), params


def _zero_fc(cls, params):
  head = f'{cls.__name__}/~/linear'
  return {**params, head: jax.tree.map(jnp.zeros_like, params[head])}


def _nonzero(grads):
  return {f'{m}/{n}' for m, d in grads.items() for n, g in d.items() if np.any(np.asarray(g) != 0)}


def test_residual_branches_are_silent_at_init(tiny):
  cls, forward, _, params = tiny
  out = forward(_zero_fc(cls, params))
  sig = jax.tree.map(np.asarray, out['signal'])
  if cls is fixup_resnet.FixUp_ResNet:  # zero last conv: the branch outputs exactly 0
    np.testing.assert_array_equal(sig['res_avg_var'], 0.0)
  else:  # DeepMind's res_avg_var is taken before the gain g = 0
    assert np.all(sig['res_avg_var'] > 0)
  # A block that is not a transition passes its input through unchanged (Fixup's final ReLU
  # acts on the non-negative output of the previous block).
  for i in np.flatnonzero(~sig['transition'][1:]) + 1:
    assert sig['avg_var'][i] == sig['avg_var'][i - 1] and sig['avg_var'][i] > 0
  np.testing.assert_array_equal(out['logits'], 0.0)  # the default classifier starts at zero


def test_first_gradients_reach_only_what_the_papers_say(tiny):
  cls, _, grad, params = tiny
  # Zero classifier (the default): only the classifier itself gets a gradient in the first step.
  assert {p.rsplit('/', 1)[0] for p in _nonzero(grad(_zero_fc(cls, params)))} == {
      f'{cls.__name__}/~/linear'}
  # With a random classifier, SkipInit's g = 0 blocks every branch weight but g itself gets a
  # gradient; Fixup's zero last conv blocks the branch's first two convs and its scale.
  live = _nonzero(grad(params))
  blocks = [m for m in params if m.count('/~/') == 1 and 'block' in m]
  assert len(blocks) == sum(DEPTH)
  for block in blocks:
    if cls is skipinit_resnet.SkipInit_ResNet:
      assert f'{block}/skip_gain' in live
      assert not any(p.startswith(f'{block}/~/conv{i}/') for p in live for i in range(3))
    else:
      assert f'{block}/~/conv2/w' in live and f'{block}/bias3b' in live
      assert not {f'{block}/~/conv0/w', f'{block}/~/conv1/w', f'{block}/scale'} & live


@pytest.mark.parametrize('tiny', [skipinit_resnet.SkipInit_ResNet], indirect=True,
                         ids=['SkipInit_ResNet'])
def test_skipinit_gain_is_what_keeps_the_unnormalized_signal_from_growing(tiny):
  _, forward, _, params = tiny
  # De & Smith 2020, sec. 3: without normalization (g = 1) the variance of the residual stream
  # grows at every block, geometrically; with g = 0 it stays put.
  ones = {m: {n: jnp.ones_like(v) if n == 'skip_gain' else v for n, v in d.items()}
          for m, d in params.items()}
  silent = np.asarray(forward(params)['signal']['avg_var'])
  grown = np.asarray(forward(ones)['signal']['avg_var'])
  stage = slice(2, 7)  # the 5 blocks of stage 3
  np.testing.assert_array_equal(np.diff(silent[stage]), 0.0)
  ratios = grown[stage][1:] / grown[stage][:-1]
  assert np.all(ratios > 1.03), ratios
  assert grown[6] / grown[2] > 1.2


def test_fixup_init_scales_follow_the_rule():
  # A first block of stage 2 in a 16-block Fixup-ResNet-50: bottleneck width 128, 512 outputs.
  num_blocks = 16
  block = hk.transform(lambda x: fixup_resnet.FixupBlock(256, 512, num_blocks, stride=2)(x, True))
  params = jax.jit(block.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 256)))
  expect = {'conv0': (2 / 128) ** 0.5 * num_blocks ** -0.25,
            'conv1': (2 / (128 * 9)) ** 0.5 * num_blocks ** -0.25,
            'conv_shortcut': (2 / 512) ** 0.5}
  for conv, std in expect.items():
    w = np.asarray(params[f'res_block/~/{conv}']['w'])
    assert abs(w.mean()) < 0.05 * std and w.std() == pytest.approx(std, rel=0.03), conv
  assert not np.any(np.asarray(params['res_block/~/conv2']['w']))
  assert float(params['res_block']['scale']) == 1.0
  assert all(float(params['res_block'][b]) == 0.0 for b in params['res_block'] if 'bias' in b)


def test_registered_with_official_names_and_clear_errors():
  for family in ('skipinit_resnet', 'fixup_resnet'):
    assert [n for n in models.available() if n.startswith(family)] == [
        f'{family}{d}' for d in (50, 101, 152, 200, 288, 600)]
  with pytest.raises(ValueError, match='depth'):
    models.create('fixup_resnet50', depth=51)
  with pytest.raises(ValueError, match='drop_rate'):
    models.create('skipinit_resnet50', drop_rate=1.0)
  with pytest.raises(ValueError, match='activation'):
    models.create('fixup_resnet50', activation='nope')
