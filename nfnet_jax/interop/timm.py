"""Weights to and from timm (PyTorch Image Models) state dicts, without PyTorch.

timm's ``dm_nfnet_f0`` … ``dm_nfnet_f6`` are DeepMind's NFNets (our ``nfnet_f0`` … ``nfnet_f6``); its
``nfnet_l0`` and ``eca_nfnet_l0`` … ``eca_nfnet_l3`` are our models of the same names. The key map is
derived from our parameter tree (so it holds for any width, depth or class count):

  stem_conv{i}            stem.conv{i+1}            WS conv: w HWIO ↔ weight OIHW, gain [O] ↔ [O,1,1,1]
  nf_block_{n}/conv0..2   stages.{s}.{b}.conv1..3   (conv1b ↔ conv2b), conv_shortcut ↔ downsample.conv
  squeeze_excite/linear*  attn_last.fc1/fc2         w [I,O] ↔ [O,I,1,1];  eca/w [k] ↔ attn_last.conv.weight [1,1,k]
  nf_block_{n}/skip_gain  skipinit_gain;  final_conv ↔ final_conv;  linear ↔ head.fc

Files: ``.safetensors`` are read with the ``safetensors`` package into numpy; PyTorch ``.pth``/``.bin``
files (torch's zip format) are read here by a restricted unpickler that can build only tensors, storages
and plain containers, so a file that tries to run code is refused and torch is never needed.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from nfnet_jax import paths

# Our registry name → timm's model name.
TIMM_NAMES = {f"nfnet_f{i}": f"dm_nfnet_f{i}" for i in range(7)}
TIMM_NAMES.update({n: n for n in ("nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2",
                                  "eca_nfnet_l3")})

StateDict = dict  # {timm key: np.ndarray}


class IncompatibleStateDictError(ValueError):
  """A timm state dict (or our params) does not fit the model it is converted for."""


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A PyTorch file's pickle asked for something other than tensors and plain containers."""


# ---------------------------------------------------------------------------
# The key map.
# ---------------------------------------------------------------------------

_CONVS = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
          "conv_shortcut": "downsample.conv"}
_SE = {"linear": "fc1", "linear_1": "fc2"}


def _conv_keys(prefix: str) -> dict[str, tuple[str, str]]:
  return {f"{prefix}.weight": ("w", "conv"), f"{prefix}.gain": ("gain", "gain"),
          f"{prefix}.bias": ("bias", "same")}


def _block_index(name: str) -> int:
  return int(name.rpartition("_")[2]) if name != "nf_block" else 0


def key_map(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str, str]]:
  """timm key → (our module path, our param name, kind) for a params tree (arrays or shape structs).

  Blocks are put into stages by their projection shortcut: in these networks exactly the first
  block of each stage has one. Raises IncompatibleStateDictError for a tree of another family.
  """
  out: dict[str, tuple[str, str, str]] = {}
  blocks: dict[int, dict[str, str]] = {}  # block index → {sub path: module path}
  for module in tree:
    parts = module.split("/~/")
    if len(parts) < 2:
      raise IncompatibleStateDictError(f"{module!r} is not a module of an NFNet or NFNet-L.")
    head, rest = parts[1], parts[2:]
    if re.fullmatch(r"stem_conv\d", head) and not rest:
      keys = _conv_keys(f"stem.conv{int(head[-1]) + 1}")
    elif head == "final_conv" and not rest:
      keys = _conv_keys("final_conv")
    elif head == "linear" and not rest:
      keys = {"head.fc.weight": ("w", "linear"), "head.fc.bias": ("b", "same")}
    elif re.fullmatch(r"nf_block(_\d+)?", head):
      blocks.setdefault(_block_index(head), {})["/~/".join(rest)] = module
      continue
    else:
      raise IncompatibleStateDictError(f"{module!r} is not a module of an NFNet or NFNet-L.")
    out.update({k: (module, p, kind) for k, (p, kind) in keys.items()})
  stage, index = -1, 0
  for n in sorted(blocks):
    subs = blocks[n]
    stage, index = (stage + 1, 0) if "conv_shortcut" in subs else (stage, index + 1)
    if stage < 0:
      raise IncompatibleStateDictError("the first residual block has no projection shortcut; "
                                       "not an NFNet or NFNet-L.")
    prefix = f"stages.{stage}.{index}"
    for sub, module in subs.items():
      if sub == "":
        keys = {f"{prefix}.skipinit_gain": ("skip_gain", "same")}
      elif sub in _CONVS:
        keys = _conv_keys(f"{prefix}.{_CONVS[sub]}")
      elif sub.startswith("squeeze_excite/~/") and sub.split("/~/")[1] in _SE:
        fc = f"{prefix}.attn_last.{_SE[sub.split('/~/')[1]]}"
        keys = {f"{fc}.weight": ("w", "conv1x1"), f"{fc}.bias": ("b", "same")}
      elif sub == "eca":
        keys = {f"{prefix}.attn_last.conv.weight": ("w", "eca")}
      else:
        raise IncompatibleStateDictError(f"{module!r} is not a module of an NFNet or NFNet-L.")
      out.update({k: (module, p, kind) for k, (p, kind) in keys.items()})
  mapped = {(m, p) for m, p, _ in out.values()}
  missing = [f"{m}/{p}" for m, d in tree.items() for p in d if (m, p) not in mapped]
  if missing:
    raise IncompatibleStateDictError(f"no timm key for our parameter(s) {missing}.")
  return out


def _timm_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "conv":  # HWIO → OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "gain":
    return (shape[0], 1, 1, 1)
  if kind == "linear":
    return (shape[1], shape[0])
  if kind == "conv1x1":
    return (shape[1], shape[0], 1, 1)
  if kind == "eca":
    return (1, 1, shape[0])
  return tuple(shape)


def _to_timm(kind: str, x: np.ndarray) -> np.ndarray:
  shape = _timm_shape(kind, x.shape)
  if kind == "conv":
    x = x.transpose(3, 2, 0, 1)
  elif kind in ("linear", "conv1x1"):
    x = x.T
  return np.array(x.reshape(shape), order="C")  # a C-contiguous copy (0-d arrays stay 0-d)


def _from_timm(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "conv":
    x = x.transpose(2, 3, 1, 0)
  elif kind == "gain":
    x = x.reshape(x.shape[0])
  elif kind == "linear":
    x = x.T
  elif kind == "conv1x1":
    x = x.reshape(x.shape[:2]).T
  elif kind == "eca":
    x = x.reshape(x.shape[-1])
  return x  # a view where possible: the values are the file's, bit for bit


def _describe(shape) -> str:
  return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _check(have: Mapping[str, tuple], want: Mapping[str, tuple], what: str) -> None:
  missing = sorted(k for k in want if k not in have)
  unexpected = sorted(k for k in have if k not in want)
  misshaped = sorted(k for k in want if k in have and tuple(have[k]) != tuple(want[k]))
  if not (missing or unexpected or misshaped):
    return
  lines = [f"{what} do not fit the model: {len(missing)} missing, {len(unexpected)} unexpected, "
           f"{len(misshaped)} mis-shaped (of {len(want)} expected). Nothing was converted."]
  lines += [f"  missing     {k} {_describe(want[k])}" for k in missing]
  lines += [f"  unexpected  {k} {_describe(have[k])}" for k in unexpected]
  lines += [f"  mis-shaped  {k}: given {_describe(have[k])}, model {_describe(want[k])}"
            for k in misshaped]
  raise IncompatibleStateDictError("\n".join(lines))


def expected_tree(model: str | Mapping, **overrides) -> Mapping:
  """Our params tree as shape structs for a registry name (with `models.create` overrides), or `model`."""
  if not isinstance(model, str):
    if overrides:
      raise ValueError("overrides apply to a model name, not to a params tree.")
    return model
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))
  return _abstract_tree(model, frozen)


@functools.lru_cache(maxsize=16)
def _abstract_tree(model: str, overrides: tuple) -> Mapping:
  overrides = dict(overrides)
  import jax  # pylint: disable=import-outside-toplevel
  from nfnet_jax import models  # pylint: disable=import-outside-toplevel
  spec = models.get_spec(model)
  if model not in TIMM_NAMES:
    raise ValueError(f"{model!r} has no timm counterpart; supported: {', '.join(TIMM_NAMES)} "
                     "(timm's dm_nfnet_fN is our nfnet_fN).")
  size = spec.min_image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  return jax.eval_shape(models.create(model, **overrides).init, jax.random.PRNGKey(0), images)[0]


def timm_shapes(model: str | Mapping, **overrides) -> dict[str, tuple[int, ...]]:
  """timm key → shape of the state dict timm's model of the same name (and config) has."""
  tree = expected_tree(model, **overrides)
  return {k: _timm_shape(kind, tuple(tree[m][p].shape)) for k, (m, p, kind) in key_map(tree).items()}


def from_timm(source: str | os.PathLike | Mapping[str, Any], model: str | Mapping,
              **overrides) -> dict[str, dict[str, np.ndarray]]:
  """Our Haiku params {module_path: {name: array}} from a timm state dict.

  Args:
    source: a ``.safetensors`` file, a PyTorch ``.pth``/``.bin`` state dict file, or a dict of
      arrays keyed like timm's ``model.state_dict()``.
    model: our registry name (e.g. 'nfnet_f0' for timm's 'dm_nfnet_f0', 'eca_nfnet_l0') or a
      params tree to match; `overrides` go to ``models.create`` (e.g. num_classes=10).
  Every key must be there with timm's shape and nothing else may be, or
  IncompatibleStateDictError names each difference and nothing is converted.
  """
  what = f"timm tensors in {os.fspath(source)}" if not isinstance(source, Mapping) else "timm tensors"
  state = read_state_dict(source) if not isinstance(source, Mapping) else dict(source)
  tree = expected_tree(model, **overrides)
  mapping = key_map(tree)
  want = {k: _timm_shape(kind, tuple(tree[m][p].shape)) for k, (m, p, kind) in mapping.items()}
  _check({k: np.shape(v) for k, v in state.items()}, want, what)
  params: dict[str, dict[str, np.ndarray]] = {m: {} for m in tree}
  for key, (module, name, kind) in mapping.items():
    value = np.asarray(state[key])
    if value.dtype.kind != "f":
      raise IncompatibleStateDictError(f"{what}: {key} has dtype {value.dtype}, not floating point.")
    params[module][name] = _from_timm(kind, value)
  return params


def to_timm(params: Mapping[str, Mapping[str, Any]], model: str | Mapping,
            **overrides) -> StateDict:
  """timm's state dict {key: np.ndarray} for our params; timm's same-name model loads it with strict=True."""
  tree = expected_tree(model, **overrides)
  have = {f"{m}/{n}": np.shape(v) for m, d in params.items() for n, v in d.items()}
  want = {f"{m}/{n}": tuple(v.shape) for m, d in tree.items() for n, v in d.items()}
  _check(have, want, "parameters")
  return {key: _to_timm(kind, np.asarray(params[m][p])) for key, (m, p, kind) in key_map(tree).items()}


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def is_safetensors(head: bytes) -> bool:
  """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
  return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30


def is_torch_zip(data: bytes) -> bool:
  """A PyTorch (>= 1.6) zip checkpoint: a zip archive holding '<name>/data.pkl'."""
  if not zipfile.is_zipfile(io.BytesIO(data)):
    return False
  with zipfile.ZipFile(io.BytesIO(data)) as z:
    return any(n.endswith("data.pkl") and n.count("/") == 1 for n in z.namelist())


def is_timm_file(path: str | os.PathLike) -> bool:
  """Whether `path` is a safetensors file or a PyTorch zip checkpoint (by content, not name).

  Reads the first bytes and, for a zip, its member list only: never the whole file.
  """
  with paths.open_file(os.fspath(path), "rb") as f:
    head = f.read(9)
    if is_safetensors(head):
      return True
    if not head.startswith(b"PK"):
      return False
    f.seek(0)
    try:
      with zipfile.ZipFile(f) as z:
        return any(n.endswith("data.pkl") and n.count("/") == 1 for n in z.namelist())
    except zipfile.BadZipFile:
      return False


def read_state_dict(path: str | os.PathLike) -> StateDict:
  """{key: np.ndarray} from a ``.safetensors`` file or a PyTorch zip ``.pth``/``.bin`` state dict."""
  source = os.fspath(path)
  data = paths.read_bytes(source)
  if is_safetensors(data[:9]):
    from safetensors.numpy import load  # pylint: disable=import-outside-toplevel
    try:
      return dict(load(data))
    except Exception as e:  # malformed header or data
      raise ValueError(f"{source}: cannot read this safetensors file ({e}).") from None
  if is_torch_zip(data):
    return _read_torch_zip(data, source)
  if data[:1] == b"\x80":
    raise ValueError(f"{source}: a pickle, not a zip checkpoint; a legacy (torch < 1.6) file cannot "
                     "be read safely. Re-save it with torch.save(state_dict, f) or as safetensors.")
  raise ValueError(f"{source}: neither a safetensors file nor a PyTorch zip checkpoint.")


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, name: str):
    dtype = _STORAGE_DTYPES[name]
    if dtype == "bfloat16":
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
  del requires_grad, hooks, metadata
  itemsize = storage.dtype.itemsize
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
  if min(size) > 0 and needed > storage.size:
    raise UnsafeCheckpointError("a tensor reaches past the end of its storage.")
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
  del requires_grad, hooks
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Builds tensors (as numpy arrays) and plain containers; refuses every other global."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
    super().__init__(io.BytesIO(data))
    self.archive, self.prefix = archive, prefix
    self.storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return dict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafeCheckpointError(
        f"refusing to unpickle '{module}.{name}': a state dict file may contain only tensors and "
        "plain containers. This file is either not a state dict or is hostile; do not open it with "
        "torch.load(weights_only=False).")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}.")
    _, storage_type, key, _, numel = pid
    if key not in self.storages:
      raw = self.archive.read(f"{self.prefix}data/{key}")
      array = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
      if array.size != numel:
        raise UnsafeCheckpointError(f"storage {key} holds {array.size} elements, not {numel}.")
      self.storages[key] = array.astype(storage_type.dtype.newbyteorder("="))
    return self.storages[key]


def _read_torch_zip(data: bytes, source: str) -> StateDict:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    pkl = next(n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1)
    prefix = pkl[:-len("data.pkl")]
    if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
      raise ValueError(f"{source}: big-endian PyTorch files are not supported.")
    try:
      obj = _TorchUnpickler(archive.read(pkl), archive, prefix).load()
    except UnsafeCheckpointError as e:
      raise UnsafeCheckpointError(f"{source}: {e}") from None
    except Exception as e:  # truncated or malformed pickle
      raise ValueError(f"{source}: cannot read this PyTorch file ({type(e).__name__}: {e}).") from None
  if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                          for k, v in obj.items()):
    raise ValueError(f"{source}: not a flat state dict {{name: tensor}}; save model.state_dict().")
  return obj


def save_safetensors(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict as ``.safetensors`` (what timm and torch read), atomically."""
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
  data = save({k: np.array(v, order="C") for k, v in state.items()}, metadata={"format": "pt"})
  paths.write_bytes(os.fspath(path), data)


__all__ = ["TIMM_NAMES", "IncompatibleStateDictError", "UnsafeCheckpointError", "key_map",
           "timm_shapes", "from_timm", "to_timm", "read_state_dict", "save_safetensors",
           "is_timm_file", "expected_tree"]
