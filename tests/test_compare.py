"""The --compare=timm mode without torch: its timing loop and ratios, its torch process, its argument errors."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import benchmark
from nfnet_jax import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _product(size):
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return lambda: matmul(a, a)


def test_side_by_side_alternates_and_divides_their_best_by_ours():
  # A 64² product against 768² and 1024² ones: 1728 and 4096 times the work (enough margin for
  # the > 3 below even when a parallel test run loads the machine).
  result = compare.side_by_side(_product(64), {'slow': _product(1024), 'fast': _product(768)}, warmup=1,
                                steps=5)
  assert result['best'] == 'fast'
  assert set(result['theirs']) == {'slow', 'fast'}
  for timing in [result['ours'], *result['theirs'].values()]:
    assert len(timing['times_s']) == 5
  fast, ours = result['theirs']['fast'], result['ours']
  assert result['speedup_median'] == pytest.approx(fast['median_s'] / ours['median_s'])
  assert result['speedup_median'] > 3
  assert result['speedup_min'] == pytest.approx(min(fast['min_s'], result['theirs']['slow']['min_s'])
                                                / ours['min_s'])
  with pytest.raises(ValueError, match='at least one'):
    compare.side_by_side(_product(8), {})


@pytest.mark.parametrize('args, message', [
    (('torch', ['train'], ['nfnet_f0'], ['nchw']), "--compare takes 'timm'"),
    (('timm', ['agc'], ['nfnet_f0'], ['nchw']), "measures \\['train', 'eval', 'ops'\\] only"),
    (('timm', ['train'], ['resnet50'], ['nchw']), "no timm equivalent of \\['resnet50'\\]"),
    (('timm', ['train'], ['nfnet_f0'], ['nchw', 'tiled']), '--timm_variants takes some of'),
    (('timm', ['train'], ['nfnet_f0'], []), '--timm_variants takes some of'),
])
def test_check_rejects_bad_requests_in_one_line(args, message):
  with pytest.raises(compare.CompareError, match=message) as info:
    compare.check(*args)
  assert '\n' not in str(info.value)
  compare.check('timm', ['train', 'eval'], ['nfnet_f0', 'nf_resnet50'], ['nhwc', 'nchw_compile'])


@pytest.mark.parametrize('op', list(compare.CONV_OPS))
def test_our_conv_passes_are_the_convolution_and_its_two_gradients(op):
  # Each timed pass must compute what its name says: checked against lax's native conv and jax.grad.
  cin, cout, k, groups, side = compare.CONV_OPS[op]
  batch = 2
  passes = compare.jax_conv_passes(op, batch, 'float32')
  assert set(passes) == set(compare.PASSES)
  x, w = compare.conv_inputs(op, batch, 'float32')
  native = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=(
      'NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
  loss = lambda x, w: native(x, w).sum()   # its cotangent is all ones, as the passes use
  np.testing.assert_allclose(passes['forward'](), native(x, w), rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(passes['weight_grad'](), jax.grad(loss, 1)(x, w), rtol=2e-4, atol=2e-3)
  np.testing.assert_allclose(passes['input_grad'](), jax.grad(loss, 0)(x, w), rtol=2e-4, atol=2e-3)
  assert compare.conv_op_flops(op, batch) == 2 * batch * side * side * k * k * (cin // groups) * cout
  assert compare.conv_op_flops('3x3 768->768 g6 @8', 8) == 2 * 8 * 64 * 9 * 128 * 768


def _benchmark_without_torch(*flags):
  # `sys.modules[name] = None` makes `import name` fail, as it does where the package is not installed.
  code = ("import runpy, sys; sys.modules['torch'] = sys.modules['timm'] = None; "
          f"sys.argv = ['benchmark.py', *{list(flags)!r}]; "
          "runpy.run_path('scripts/benchmark.py', run_name='__main__')")
  env = {**os.environ, 'PYTHONPATH': ROOT}
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def test_script_says_what_is_missing_before_building_anything():
  done = _benchmark_without_torch('--compare=timm', '--models=nf_resnet50', '--batch_size=2',
                                  '--image_size=64')
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert 'needs torch and timm' in last and 'pip install torch timm' in last
  done = _benchmark_without_torch('--compare=timm', '--models=resnet50')
  assert done.returncode != 0 and 'no timm equivalent' in done.stderr.strip().splitlines()[-1]
  done = _benchmark_without_torch('--compare=timm', '--steps=3')
  assert done.returncode != 0 and 'at least 10 steps' in done.stderr.strip().splitlines()[-1]


def test_a_remote_call_is_timed_where_it_ran():
  # The torch process reports its own seconds; the pipe's round trip must not count as theirs.
  calls = []
  remote = benchmark.Remote(lambda: calls.append(1) or 0.25)
  ours, theirs = benchmark.time_alternating([_product(64), remote], warmup=2, steps=4)
  assert len(calls) == 6
  assert theirs == {'median_s': 0.25, 'min_s': 0.25, 'times_s': [0.25] * 4}
  assert ours['median_s'] < 0.25


def test_the_torch_process_answers_each_request_on_one_line():
  requests = [{'op': 'build', 'id': 1, 'what': 'resnet', 'args': {}}, {'op': 'run', 'id': 7},
              {'op': 'drop', 'id': 7}]
  done = subprocess.run([sys.executable, '-c', 'from nfnet_jax import compare; print("noise"); compare.serve()'],
                        input=''.join(json.dumps(r) + '\n' for r in requests), cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
  assert done.returncode == 0, done.stderr
  replies = [json.loads(line) for line in done.stdout.splitlines()[1:]]
  assert done.stdout.splitlines()[0] == 'noise'   # printed before serve() took over stdout
  assert replies == [{'error': "ValueError: unknown torch work 'resnet'"}, {'error': 'KeyError: 7'}, {}]


@pytest.mark.skipif(importlib.util.find_spec('torch') is not None, reason='torch is installed here')
def test_the_torch_process_says_what_is_missing():
  with pytest.raises(compare.CompareError, match='needs torch and timm.*pip install torch timm'):
    compare.TorchProcess('cpu')
