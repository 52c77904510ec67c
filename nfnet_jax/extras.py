"""Optional dependencies: the pip extra that provides each one, and the one way to import them.

`pip install nfnet-jax` installs what the models, AGC, the optimizer, `pretrained` and `flops` need
(jax, Haiku, optax, numpy). The input pipelines need the `data` extra (TensorFlow,
tensorflow-datasets, scikit-learn), training and evaluation the `train` extra (orbax, ml-collections,
matplotlib, xxhash and `data`). Modules that need one import it with `require`, so a missing package says
which extra to install.
"""

from __future__ import annotations

import importlib
import os
import types

# Top-level package -> the extra that installs it.
EXTRA_OF = {
    'tensorflow': 'data',
    'tensorflow_datasets': 'data',
    'sklearn': 'data',
    'orbax': 'train',
    'ml_collections': 'train',
    'matplotlib': 'train',
    'xxhash': 'train',
}


class MissingExtraError(ImportError):
  """A feature needs a package that one of nfnet-jax's pip extras installs."""


def _quiet_tensorflow() -> None:
  # TensorFlow prints C++ INFO lines as it loads (the oneDNN notice, the CPU-feature notice and absl's
  # pre-init banner), so both settings must be in place before its first import. Level 1 drops INFO
  # only: TensorFlow's warnings and errors still show. oneDNN's custom kernels only speed up
  # TensorFlow's own ops (here: input preprocessing), never the JAX model. Values the user set are kept.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


def require(module: str, feature: str) -> types.ModuleType:
  """Imports `module` (e.g. 'orbax.checkpoint') for `feature`, or says which extra to install.

  Raises MissingExtraError "FEATURE needs PACKAGE: pip install 'nfnet-jax[EXTRA]'" when the package
  (or one it needs) is not installed.
  """
  top = module.split('.')[0]
  if top not in EXTRA_OF:
    raise ValueError(f'{top!r} is not an optional dependency; known: {sorted(EXTRA_OF)}')
  _quiet_tensorflow()
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    missing = (e.name or top).split('.')[0]
    extra = EXTRA_OF.get(missing, EXTRA_OF[top])
    raise MissingExtraError(
        f"{feature} needs {missing}, which is not installed: pip install 'nfnet-jax[{extra}]'"
    ) from e
