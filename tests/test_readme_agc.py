"""Runs the README's "Use AGC in your own JAX project" example, so it cannot rot."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def readme_example() -> str:
  with open(README) as f:
    text = f.read()
  blocks = re.findall(r'<!-- agc-example -->\n```python\n(.*?)```\n<!-- /agc-example -->', text,
                      re.S)
  assert len(blocks) == 1, 'README.md must hold exactly one ```python block between the markers'
  return blocks[0]


def test_readme_agc_example_runs_and_masks_the_classifier(capsys):
  namespace = {'__name__': '__readme__'}
  exec(compile(readme_example(), 'README.md:agc-example', 'exec'), namespace)
  losses = [float(x) for x in re.findall(r'loss ([0-9.]+)', capsys.readouterr().out)]
  assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]

  # With huge gradients, the example's optimizer clips the conv but not the classifier.
  params, optimizer = namespace['params'], namespace['optimizer']
  assert set(params) == {'conv', 'classifier'}
  huge = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e3), params)
  ours, _ = jax.jit(optimizer.update)(huge, optimizer.init(params), params)
  sgd = optax.sgd(learning_rate=0.1, momentum=0.9, nesterov=True)
  plain, _ = jax.jit(sgd.update)(huge, sgd.init(params), params)
  np.testing.assert_array_equal(ours['classifier']['w'], plain['classifier']['w'])
  assert np.abs(ours['conv']['w']).max() < 1e-2 * np.abs(plain['conv']['w']).max()
