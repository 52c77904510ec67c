"""Safe reading and writing of parameter files.

DeepMind released the NFNet weights as files named ``F0_haiku.npz`` … ``F6_haiku.npz`` that are in fact pickles,
written with ``dill``, of a nested dict ``{module_path: {param_name: ndarray}}``. Unpickling runs whatever the file
asks for, so :func:`load` uses a restricted unpickler that can build only numpy arrays, dtypes and plain containers;
anything else in the file is refused before it can run. Flat ``.npz`` files keyed ``"module_path/param_name"`` (what
:func:`save` writes) are read with ``allow_pickle=False``. timm/PyTorch state dicts (``.safetensors``, ``.pth``,
``.bin``; told apart by content) are converted by :mod:`nfnet_jax.interop.timm` for the model named by ``like``.
"""

import codecs
import errno
import io
import os
import pickle
import warnings
import zipfile
from typing import Any, Mapping, Optional, Union

import numpy as np

from nfnet_jax import paths
from nfnet_jax.interop import timm as timm_interop

Params = dict  # {module_path: {param_name: np.ndarray}}

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle asked for something other than numpy arrays and plain containers."""


class IncompatibleParamsError(ValueError):
  """A parameter file does not fit the model it is loaded for."""


def _safe_create_array(f, args, state, npdict=None):
  """Stand-in for ``dill._dill._create_array`` that only rebuilds plain ndarrays."""
  if f is not _reconstruct:
    raise UnsafePickleError(f"dill array record uses constructor {f!r}; only numpy's own is allowed.")
  if npdict:
    raise UnsafePickleError("dill array record carries instance attributes; plain ndarrays have none.")
  array = f(*args)
  array.__setstate__(state)
  return array


def _numpy_core():
  try:
    from numpy import _core  # numpy >= 2
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy import core as _core
  return _core


_core = _numpy_core()
_reconstruct = _core.multiarray._reconstruct

# (module, name) -> object. Both numpy 1.x ("numpy.core") and 2.x ("numpy._core") spellings appear in files.
_ALLOWED = {}
for _mod in ("numpy.core", "numpy._core"):
  _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _reconstruct
  _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _core.multiarray.scalar
  _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _core.numeric._frombuffer
_ALLOWED.update({
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("dill._dill", "_create_array"): _safe_create_array,
    ("collections", "OrderedDict"): dict,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles encode bytes this way
})


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler whose only reachable globals are numpy array/dtype constructors and plain containers."""

  def find_class(self, module, name):
    obj = _ALLOWED.get((module, name))
    if obj is None:
      raise UnsafePickleError(
          f"refusing to unpickle '{module}.{name}': a parameter file may contain only numpy arrays and "
          "plain containers (dict/list/tuple). This file is either not a parameter file or is hostile; "
          "do not open it with pickle/dill.")
    return obj

  def persistent_load(self, pid):
    raise UnsafePickleError("refusing a pickle that uses persistent ids.")


def _to_nested(flat: Mapping[str, np.ndarray], source: str) -> Params:
  params: Params = {}
  for key, value in flat.items():
    module, sep, name = key.rpartition("/")
    if not sep or not module or not name:
      raise ValueError(f"{source}: key {key!r} is not of the form 'module_path/param_name'.")
    params.setdefault(module, {})[name] = value
  return params


def _validate(tree: Any, source: str) -> Params:
  """Checks a loaded object is {str: {str: numeric ndarray}} and returns it as plain dicts."""
  if not isinstance(tree, Mapping):
    raise ValueError(f"{source}: expected a dict {{module_path: {{param_name: array}}}}, got {type(tree).__name__}.")
  params: Params = {}
  for module, leaves in tree.items():
    if not isinstance(module, str) or not isinstance(leaves, Mapping):
      raise ValueError(f"{source}: entry {module!r} is not module_path -> {{param_name: array}}.")
    params[module] = {}
    for name, value in leaves.items():
      if not isinstance(name, str):
        raise ValueError(f"{source}: param name {name!r} in {module!r} is not a string.")
      if isinstance(value, np.generic):
        value = np.asarray(value)
      if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        raise ValueError(f"{source}: {module}/{name} is {type(value).__name__} "
                         f"{getattr(value, 'dtype', '')}, not a numeric numpy array.")
      params[module][name] = value
  return params


def _read(path: Union[str, os.PathLike]) -> Params:
  source = os.fspath(path)
  data = paths.read_bytes(source)
  if data.startswith(_ZIP_MAGIC):
    try:
      with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        flat = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
      raise ValueError(f"{source}: not a readable .npz file ({type(e).__name__}: {e}); it is truncated or "
                       "damaged: download or export it again.") from None
    return _validate(_to_nested(flat, source), source)
  if data.startswith(_PICKLE_MAGIC):
    try:
      tree = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as e:
      raise UnsafePickleError(f"{source}: {e}") from None
    except Exception as e:  # truncated or malformed pickle
      raise ValueError(f"{source}: cannot read this pickle ({type(e).__name__}: {e}).") from None
    return _validate(tree, source)
  raise ValueError(f"{source}: neither an .npz (zip) file nor a pickle (first bytes {data[:4]!r}).")


def _describe(shape) -> str:
  return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def check_compatible(params: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Mapping[str, Any]],
                     what: str = "params") -> None:
  """Raises IncompatibleParamsError naming every missing, unexpected and mis-shaped parameter.

  Args:
    params: nested {module_path: {param_name: array}} to check (e.g. read from a file).
    expected: the model's tree, arrays or shape structs (e.g. from ``jax.eval_shape(model.init, ...)``).
    what: how to call ``params`` in the message.
  """
  flat = {f"{m}/{n}": tuple(np.shape(v)) for m, d in params.items() for n, v in d.items()}
  want = {f"{m}/{n}": tuple(v.shape) for m, d in expected.items() for n, v in d.items()}
  missing = sorted(k for k in want if k not in flat)
  unexpected = sorted(k for k in flat if k not in want)
  misshaped = sorted(k for k in want if k in flat and flat[k] != want[k])
  if not (missing or unexpected or misshaped):
    return
  lines = [f"{what} do not fit the model: {len(missing)} missing, {len(unexpected)} unexpected, "
           f"{len(misshaped)} mis-shaped (of {len(want)} expected). Nothing was loaded."]
  lines += [f"  missing     {k} {_describe(want[k])}" for k in missing]
  lines += [f"  unexpected  {k} {_describe(flat[k])}" for k in unexpected]
  lines += [f"  mis-shaped  {k}: file {_describe(flat[k])}, model {_describe(want[k])}" for k in misshaped]
  raise IncompatibleParamsError("\n".join(lines))


def _expected_tree(like: Union[str, Mapping]) -> Mapping:
  if not isinstance(like, str):
    return like
  import jax  # local: only needed when a model name is given
  from nfnet_jax import models
  spec = models.get_spec(like)
  model = models.create(like)
  size = spec.min_image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  return params


def load(path: Union[str, os.PathLike], like: Optional[Union[str, Mapping]] = None) -> Params:
  """Reads a parameter file into ``{module_path: {param_name: np.ndarray}}``.

  Args:
    path: a DeepMind release file (dill pickle, whatever its extension), a flat ``.npz`` from :func:`save`, or a
      timm state dict (``.safetensors`` or PyTorch ``.pth``/``.bin``, e.g. timm's ``dm_nfnet_f0`` for ours
      ``nfnet_f0``), which needs ``like``.
    like: optional model name (e.g. ``'nfnet_f0'``) or params tree; if given, the file must match it exactly
      (same module paths, names and shapes) or IncompatibleParamsError (timm files:
      ``timm_interop.IncompatibleStateDictError``) lists every difference; params of another dtype (e.g.
      float16) are cast to the model's with a warning saying so.
  """
  if timm_interop.is_timm_file(path):
    if like is None:
      raise ValueError(f"{os.fspath(path)} is a timm/PyTorch state dict: name the model it is for with like= "
                       "(--model on the command line), e.g. like='eca_nfnet_l0' or 'nfnet_f0' for dm_nfnet_f0.")
    return timm_interop.from_timm(path, like)
  params = _read(path)
  if like is not None:
    expected = _expected_tree(like)
    check_compatible(params, expected, what=f"parameters in {os.fspath(path)}")
    cast = sorted(f"{m}/{n}" for m, d in params.items() for n, v in d.items()
                  if np.dtype(v.dtype) != np.dtype(expected[m][n].dtype))
    if cast:
      dtypes = sorted({str(params[k.rpartition("/")[0]][k.rpartition("/")[2]].dtype) for k in cast})
      warnings.warn(f"{os.fspath(path)}: {len(cast)} params are {'/'.join(dtypes)}, not the model's dtype; "
                    "they are cast to it, which cannot restore precision the file lost.", stacklevel=2)
      params = {m: {n: np.asarray(v, expected[m][n].dtype) for n, v in d.items()} for m, d in params.items()}
  return params


def check_writable(path: Union[str, os.PathLike]) -> None:
  """Raises IsADirectoryError (with the path) if `path` is a folder, which save cannot replace."""
  if paths.isdir(os.fspath(path)):
    raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(path))


def save(path: Union[str, os.PathLike], params: Mapping[str, Mapping[str, Any]]) -> None:
  """Writes ``{module_path: {param_name: array}}`` as a flat .npz keyed 'module_path/param_name', atomically."""
  flat = {}
  for module, leaves in params.items():
    for name, value in leaves.items():
      if "/" in name:
        raise ValueError(f"param name {name!r} in {module!r} contains '/', so it could not be read back.")
      flat[f"{module}/{name}"] = np.asarray(value)
  path = os.fspath(path)
  check_writable(path)
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  paths.write_bytes(path, buffer.getvalue())


def convert(path: Union[str, os.PathLike], out: Union[str, os.PathLike], *, model: str, to: str) -> str:
  """Converts a params file for ``model``: ``to='timm'`` writes timm's state dict as ``.safetensors``, ``to='npz'``
  our flat npz. The input's format (DeepMind pickle, npz, safetensors, .pth) is read off its content. Returns
  a one-line summary."""
  if to not in ("timm", "npz"):
    raise ValueError(f"to must be 'timm' or 'npz', got {to!r}.")
  suffix = os.path.splitext(os.fspath(out))[1]
  if to == "timm" and suffix != ".safetensors":
    raise ValueError(f"--to=timm writes safetensors: name the output *.safetensors, not {os.fspath(out)!r}.")
  if to == "npz" and suffix != ".npz":
    raise ValueError(f"--to=npz writes an npz: name the output *.npz, not {os.fspath(out)!r}.")
  params = load(path, like=model)
  if to == "timm":
    state = timm_interop.to_timm(params, model)
    timm_interop.save_safetensors(out, state)
    return (f"wrote {len(state)} tensors for timm's {timm_interop.TIMM_NAMES[model]} to {os.fspath(out)} "
            f"(timm.create_model({timm_interop.TIMM_NAMES[model]!r}).load_state_dict(safetensors.torch.load_file(...)))")
  save(out, params)
  return f"wrote {sum(len(d) for d in params.values())} arrays for {model} to {os.fspath(out)}"
