"""Named model variants: `create(name)` → hk.TransformedWithState, `available()`, `get_spec(name)`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any

import haiku as hk

from nfnet_jax.models import base

# Family modules, each exposing SPECS: list[ModelSpec] (see models/base.py).
_FAMILY_MODULES = (
    "nfnet_jax.models.nfnet",
    "nfnet_jax.models.nf_regnet",
    "nfnet_jax.models.nf_resnet",
    "nfnet_jax.models.resnet",
    "nfnet_jax.models.skipinit_resnet", "nfnet_jax.models.fixup_resnet",
)


def _load_specs() -> dict[str, base.ModelSpec]:
  specs: dict[str, base.ModelSpec] = {}
  for module_name in _FAMILY_MODULES:
    # A family whose file is absent is not registered; one that is present must import.
    if importlib.util.find_spec(module_name) is None:
      continue
    module = importlib.import_module(module_name)
    family_specs = getattr(module, "SPECS", None)
    if family_specs is None:
      raise ImportError(f"{module_name} must define SPECS: list[ModelSpec].")
    for spec in family_specs:
      if spec.name in specs:
        raise ImportError(f"Model name {spec.name!r} is registered twice.")
      specs[spec.name] = spec
  return specs


_SPECS = _load_specs()


def available() -> list[str]:
  """All registered model names."""
  return list(_SPECS)


def get_spec(name: str) -> base.ModelSpec:
  """The ModelSpec of `name`; unknown names raise a ValueError listing the valid ones."""
  if name not in _SPECS:
    raise ValueError(f"Unknown model {name!r}. Available models: {', '.join(available())}.")
  return _SPECS[name]


def _check_overrides(spec: base.ModelSpec, overrides: dict[str, Any]) -> None:
  params = inspect.signature(spec.constructor).parameters
  valid = sorted(k for k in params if k not in ("self", "num_classes", "name"))
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for model {spec.name!r}; "
                     f"valid options: {valid}.")


def create(name: str, num_classes: int = 1000, **overrides: Any) -> hk.TransformedWithState:
  """Builds the named model as a pure (init, apply) pair.

  init(rng, images, is_training=True) -> (params, state);
  apply(params, state, rng, images, is_training, return_metrics=False) -> (outputs, state),
  with outputs['logits'] float32 [B, num_classes] and, when return_metrics=True,
  outputs['signal'] (per-block statistics, see models/base.py). rng may be None when
  is_training=False. `overrides` replace the variant's constructor defaults
  (e.g. width=0.5, drop_rate=0.0, activation='relu').
  """
  spec = get_spec(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  _check_overrides(spec, overrides)
  kwargs = {**spec.default_kwargs, **overrides}
  # Build once outside transform so constructor errors surface here, not at first call.
  hk.transform(lambda: spec.constructor(num_classes=num_classes, **kwargs)).init(None)

  def forward(images, is_training=True, return_metrics=False):
    model = spec.constructor(num_classes=num_classes, **kwargs)
    return model(images, is_training=is_training, return_metrics=return_metrics)

  return hk.transform_with_state(forward)
