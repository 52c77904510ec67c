"""The light install: what the core modules import, what a missing extra says, and the wheel itself."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_readme_agc import readme_example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIGHT_MODULES = ['nfnet_jax', 'nfnet_jax.agc', 'nfnet_jax.models', 'nfnet_jax.pretrained',
                 'nfnet_jax.flops', 'nfnet_jax.optim', 'nfnet_jax.layers']
# Packages that only the extras install; none may be imported by the light modules.
EXTRA_PACKAGES = ['tensorflow', 'tensorflow_datasets', 'orbax', 'matplotlib', 'ml_collections',
                  'sklearn', 'dill']


def _python(code: str, *, python: str = sys.executable, cwd: str = REPO, env=None):
  return subprocess.run([python, '-c', textwrap.dedent(code)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=1800)


def test_light_modules_import_no_extra_package():
  out = _python(f"""
      import json, sys
      for name in {LIGHT_MODULES!r}:
        __import__(name)
      print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({EXTRA_PACKAGES!r}))))
  """)
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize('statement,blocked,extra', [
    ('import nfnet_jax.train', 'orbax', 'train'),
    ('import nfnet_jax.train', 'ml_collections', 'train'),
    # nfnet_jax.data itself imports without TensorFlow (the train step uses its MixUp/CutMix);
    # its pipelines need the data extra.
    ('from nfnet_jax import data; data.get_info("imagenet2012")', 'tensorflow', 'data'),
    ('from nfnet_jax import data; data.get_info("imagenet2012")', 'tensorflow_datasets', 'data'),
])
def test_missing_extra_names_the_extra_to_install(statement, blocked, extra):
  # sys.modules[name] = None is Python's way of making a package unimportable (ModuleNotFoundError).
  out = _python(f"""
      import sys
      sys.modules[{blocked!r}] = None
      from nfnet_jax import extras
      try:
        {statement}
      except extras.MissingExtraError as e:
        print(e)
  """)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().endswith(f"needs {blocked}, which is not installed: "
                                     f"pip install 'nfnet-jax[{extra}]'"), out.stdout


def test_optim_get_config_without_ml_collections_names_the_train_extra():
  out = _python("""
      import sys
      sys.modules['ml_collections'] = None
      from nfnet_jax import extras, optim
      optim.create({'lr': 0.2}, global_batch_size=256, total_steps=100, steps_per_epoch=2)  # a dict works
      try:
        optim.get_config()
      except extras.MissingExtraError as e:
        print(e)
  """)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == ("optim.get_config needs ml_collections, which is not installed: "
                                "pip install 'nfnet-jax[train]'")


def _core_pins() -> list[str]:
  """requirements.txt's pins of the packages the wheel depends on (and theirs), as constraints."""
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    return [line.strip() for line in f if '==' in line and not line.startswith('#')]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_with_core_dependencies_only(tmp_path):
  """Builds the wheel, installs it with its core dependencies only, runs the README's AGC example
  and a model forward from it, and checks that the extras' features name their extra."""
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
  run = lambda *cmd, cwd=tmp_path: subprocess.run(cmd, cwd=cwd, env=env, capture_output=True,
                                                   text=True, timeout=1800)
  wheel_dir, venv = tmp_path / 'wheel', tmp_path / 'venv'
  built = run(sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(wheel_dir), REPO)
  assert built.returncode == 0, built.stderr
  (wheel,) = wheel_dir.glob('nfnet_jax-*.whl')
  assert run(sys.executable, '-m', 'venv', str(venv)).returncode == 0
  python = str(venv / 'bin' / 'python')
  constraints = tmp_path / 'constraints.txt'
  constraints.write_text('\n'.join(_core_pins()) + '\n')
  installed = run(python, '-m', 'pip', 'install', '-q', '-c', str(constraints), str(wheel))
  assert installed.returncode == 0, installed.stderr

  example = tmp_path / 'agc_example.py'
  example.write_text(readme_example())
  out = run(python, str(example))
  assert out.returncode == 0, out.stderr
  assert out.stdout.count('loss') == 3, out.stdout

  out = _python(f"""
      import importlib.util, os
      import jax, numpy as np
      import nfnet_jax
      from nfnet_jax import extras, flops, models
      assert os.path.dirname(nfnet_jax.__file__).startswith({str(venv)!r}), nfnet_jax.__file__
      missing = [p for p in {EXTRA_PACKAGES!r} if importlib.util.find_spec(p) is not None]
      assert not missing, f'installed without being asked for: {{missing}}'

      model = models.create('nf_resnet50', num_classes=10, depth=(1, 1, 1, 1), width=1)
      images = np.ones((2, 32, 32, 3), np.float32)
      params, state = model.init(jax.random.PRNGKey(0), images, is_training=True)
      out, _ = model.apply(params, state, None, images, is_training=False)
      assert out['logits'].shape == (2, 10) and np.isfinite(out['logits']).all()
      assert flops.count_flops('nfnet_f0', 256) == 12_384_198_656
      from nfnet_jax import data
      for use, extra in ((lambda: data.get_info('digits'), 'data'),
                         (lambda: __import__('nfnet_jax.train'), 'train')):
        try:
          use()
          raise AssertionError('ran without its extra: ' + extra)
        except extras.MissingExtraError as e:
          assert str(e).endswith(f"pip install 'nfnet-jax[{{extra}}]'"), e
      print('ok')
  """, python=python, cwd=str(tmp_path), env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'ok'
