"""Multiply-add (MAC) and parameter counts, read off the traced model rather than written by hand.

:func:`count_macs` walks the jaxpr of any function (traced with shape-only arguments, so nothing is allocated or
run) and adds up the multiply-adds of every ``conv_general_dilated`` and ``dot_general`` (and of
`nfnet_jax.onednn`'s convolutions and matrix products), including those inside
``jit``, ``remat``/``checkpoint``, ``custom_jvp``/``custom_vjp`` and ``scan`` bodies. Activations, pooling,
normalisation and weight standardization are not counted; that is also the convention of the papers' FLOP tables
(1 multiply-add = 1 "FLOP"), whereas XLA's cost analysis counts 2 FLOPs per multiply-add plus elementwise work.

:func:`count_flops` applies it to a registered model at batch 1. With ``fractional_sizes=True`` spatial sizes are
taken as ``image_size / stride`` without rounding, the convention of DeepMind's published tables (NF-RegNet test
sizes such as 272 px are not multiples of 32); at sizes divisible by the model's total stride both agree.
"""

import fractions
import functools
import math
from typing import Any, Callable, Dict, Union

import jax
import numpy as np
from jax.extend import core as jax_core

# Divisible by every stride product in the zoo, so integer and fractional spatial sizes coincide there.
_REFERENCE_SIZE = 1024


def _conv_macs(eqn) -> int:
  out_shape = eqn.outvars[0].aval.shape
  rhs_shape = eqn.invars[1].aval.shape
  out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
  # Each output element reads (input features per group) x (kernel window) weights.
  return math.prod(out_shape) * math.prod(rhs_shape) // rhs_shape[out_feature_dim]


def _dot_macs(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contract)


def _sub_jaxprs(value):
  if isinstance(value, jax_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _onednn_conv_macs(eqn):
  # nfnet_jax.onednn's forward conv: out [n, oh, ow, o], w [kh, kw, in / groups, o].
  kh, kw, in_per_group, _ = eqn.invars[1].aval.shape
  return "conv", math.prod(eqn.outvars[0].aval.shape) * kh * kw * in_per_group


def _onednn_matmul_macs(eqn):
  # nfnet_jax.onednn's matmul: out [m, n] = op(a) op(b), a [m, k] or [k, m] if transposed.
  transpose_a = dict(eqn.params["attributes"])["transpose_a"]
  k = eqn.invars[0].aval.shape[0 if transpose_a else 1]
  return "dot", math.prod(eqn.outvars[0].aval.shape) * k


_ONEDNN_MACS = {"NfnetConvForward": _onednn_conv_macs, "NfnetMatmul": _onednn_matmul_macs}


def _jaxpr_macs(jaxpr) -> Dict[str, int]:
  totals = {"conv": 0, "dot": 0}
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      totals["conv"] += _conv_macs(eqn)
      continue
    if name == "dot_general":
      totals["dot"] += _dot_macs(eqn)
      continue
    if name == "ffi_call" and eqn.params["target_name"] in _ONEDNN_MACS:
      kind, macs = _ONEDNN_MACS[eqn.params["target_name"]](eqn)
      totals[kind] += macs
      continue
    if name == "while":
      raise NotImplementedError("count_macs cannot count MACs inside a while loop (unknown trip count).")
    subs = [_jaxpr_macs(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
    if not subs:
      continue
    if name == "cond":  # only one branch runs: count the most expensive
      branch = max(subs, key=lambda s: s["conv"] + s["dot"])
      subs = [branch]
    repeat = eqn.params.get("length", 1) if name == "scan" else 1
    for s in subs:
      for k in totals:
        totals[k] += repeat * s[k]
  return totals


def count_macs(fn: Callable[..., Any], *args, **kwargs) -> Dict[str, int]:
  """Multiply-adds of ``fn(*args, **kwargs)``: {'conv': …, 'dot': …, 'total': …}.

  ``args`` may be arrays or ``jax.ShapeDtypeStruct``s; ``fn`` is traced only, never run.
  """
  closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)
  totals = _jaxpr_macs(closed.jaxpr)
  totals["total"] = totals["conv"] + totals["dot"]
  return totals


@functools.lru_cache(maxsize=8)
def _abstract_model(name: str, num_classes: int, overrides: tuple):
  """The model and its params/state as shape structs (no weights allocated); these convnets' params do not
  depend on the input size, so they are built once at the smallest size."""
  from nfnet_jax import models  # local: count_macs is usable on any function without the model zoo
  model = models.create(name, num_classes=num_classes, **dict(overrides))
  size = models.get_spec(name).min_image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  params, state = jax.eval_shape(functools.partial(model.init, is_training=True), jax.random.PRNGKey(0), images)
  return model, params, state


def _forward_macs(name, image_size, num_classes, overrides) -> Dict[str, int]:
  model, params, state = _abstract_model(name, num_classes, _freeze(overrides))
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
  return count_macs(model.apply, params, state, None, images, is_training=False)


def _freeze(overrides: Dict[str, Any]) -> tuple:
  items = tuple(sorted(overrides.items()))
  try:
    hash(items)
  except TypeError:
    raise ValueError(f"model overrides must be hashable values (use tuples, not lists): {overrides}") from None
  return items


def count_flops(name: str, image_size: int, *, num_classes: int = 1000, fractional_sizes: bool = False,
                **overrides) -> Union[int, float]:
  """Multiply-adds of one forward pass of model ``name`` on one ``image_size``² image (papers' "FLOPs").

  Args:
    name: a registered model name (``nfnet_jax.models.available()``).
    image_size: input height = width in pixels.
    num_classes: classifier width (its matmul is counted).
    fractional_sizes: take spatial sizes as ``image_size / stride`` without rounding, as DeepMind's published
      tables do; the result is then a float. Off: the exact count at the padded integer sizes the model runs at.
    **overrides: constructor options passed to ``models.create`` (e.g. ``width``).
  """
  from nfnet_jax import models
  min_size = models.get_spec(name).min_image_size
  if not isinstance(image_size, (int, np.integer)) or image_size < min_size:
    raise ValueError(f"{name} needs an int image_size of at least {min_size}px, got {image_size!r}.")
  image_size = int(image_size)
  if not fractional_sizes:
    return _forward_macs(name, image_size, num_classes, overrides)["total"]
  # At sizes where every stride divides evenly, MACs = a * size**2 + b exactly (convs scale with the input
  # area; the classifier and SE matmuls act on pooled features). Two such sizes determine a and b.
  s1, s2 = _REFERENCE_SIZE, 2 * _REFERENCE_SIZE
  m1 = _forward_macs(name, s1, num_classes, overrides)["total"]
  m2 = _forward_macs(name, s2, num_classes, overrides)["total"]
  a = fractions.Fraction(m2 - m1, s2**2 - s1**2)
  b = m1 - a * s1**2
  return float(a * image_size**2 + b)


def count_params(name: str, *, num_classes: int = 1000, **overrides) -> int:
  """Number of trainable parameters of model ``name`` (BatchNorm moving statistics excluded)."""
  _, params, _ = _abstract_model(name, num_classes, _freeze(overrides))
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
