"""timm interop: key maps of every supported model, conversion of timm's own files, logits vs timm's.

The fixtures in tests/data/timm were written by scripts/make_timm_fixtures.py with timm and PyTorch
(not needed here): small timm NFNets' state dicts with timm's logits, and timm's full-size layouts.
"""

import gzip
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from nfnet_jax import flops, models, pretrained
from nfnet_jax.interop import timm

DATA = pathlib.Path(__file__).parent / "data" / "timm"
META = json.loads((DATA / "meta.json").read_text())
LAYOUTS = json.loads(gzip.decompress((DATA / "layouts.json.gz").read_bytes()))
ROOT = pathlib.Path(__file__).parent.parent


def _overrides(arch):
  ov = {k: tuple(v) if isinstance(v, list) else v for k, v in META["archs"][arch]["overrides"].items()}
  return dict(ov, num_classes=META["num_classes"])


def _fixture(arch):
  model = META["archs"][arch]["model"]
  return model, _overrides(arch), DATA / f"{arch}.safetensors"


def _bits(x):
  x = np.asarray(x)
  return x.dtype, x.shape, x.tobytes()


_BIG = ("nfnet_f3", "nfnet_f4", "nfnet_f5", "nfnet_f6")  # 30-90 s each to trace on a loaded 2-core machine


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _BIG else n
                                  for n in sorted(timm.TIMM_NAMES)])
def test_full_size_key_map_both_ways(name):
  timm_name = timm.TIMM_NAMES[name]
  want = {k: tuple(s) for k, s in LAYOUTS[timm_name]}
  assert timm.timm_shapes(name) == want  # ours → timm: every key, every shape
  # timm → ours from shapes alone (zero-stride arrays, nothing allocated).
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in want.items()}
  params = timm.from_timm(state, name)
  tree = timm.expected_tree(name)
  assert {m: {p: v.shape for p, v in d.items()} for m, d in params.items()} == {
      m: {p: v.shape for p, v in d.items()} for m, d in tree.items()}
  assert flops.count_params(name) == META["param_counts"][timm_name]


@pytest.mark.parametrize("arch", ["nfnet_l", "eca_nfnet_l", "dm_nfnet"])
def test_logits_match_timm(arch):
  model_name, overrides, path = _fixture(arch)
  params = timm.from_timm(path, model_name, **overrides)
  model = models.create(model_name, **overrides)
  x = np.random.default_rng(0).standard_normal((2, 72, 72, 3), dtype=np.float32)
  apply = jax.jit(model.apply, static_argnames="is_training")
  logits = np.asarray(apply(params, {}, None, x, is_training=False)[0]["logits"])
  ref = np.load(DATA / f"{arch}_logits.npy")
  rel = np.abs(logits - ref).max() / np.abs(ref).max()
  if arch == "dm_nfnet":
    # DeepMind's forward (ours) vs timm's: WS eps, exact vs tanh GELU; measured 1.0e-3.
    assert 1e-4 < rel < 5e-3, rel
    assert (logits.argmax(-1) == ref.argmax(-1)).all()
  else:
    assert rel <= 1e-4, rel


@pytest.mark.parametrize("arch", ["nfnet_l", "eca_nfnet_l", "dm_nfnet"])
def test_round_trips_are_bit_identical(arch, tmp_path):
  model_name, overrides, path = _fixture(arch)
  state = timm.read_state_dict(path)
  params = timm.from_timm(state, model_name, **overrides)
  back = timm.to_timm(params, model_name, **overrides)
  assert list(back) == list(timm.key_map(timm.expected_tree(model_name, **overrides)))
  assert set(back) == set(state)
  assert all(_bits(back[k]) == _bits(state[k]) for k in state)
  out = tmp_path / "out.safetensors"
  timm.save_safetensors(out, back)
  assert out.read_bytes() and (tmp_path / "out.safetensors").stat().st_size > 0
  again = timm.from_timm(out, model_name, **overrides)
  assert all(_bits(again[m][p]) == _bits(params[m][p]) for m in params for p in params[m])
  # pretrained.load reads it by content (any extension), with like= naming the model.
  renamed = tmp_path / "weights.bin"
  renamed.write_bytes(out.read_bytes())
  loaded = pretrained.load(renamed, like=timm.expected_tree(model_name, **overrides))
  assert all(_bits(loaded[m][p]) == _bits(params[m][p]) for m in params for p in params[m])
  with pytest.raises(ValueError, match="timm/PyTorch state dict: name the model"):
    pretrained.load(renamed)


def test_wrong_missing_and_extra_keys_are_named():
  model_name, overrides, path = _fixture("eca_nfnet_l")
  state = timm.read_state_dict(path)
  del state["stages.1.1.conv2b.weight"]
  state["stages.1.1.attn_last.fc1.weight"] = np.zeros((4, 32, 1, 1), np.float32)
  state["head.fc.weight"] = state["head.fc.weight"][:5]
  with pytest.raises(timm.IncompatibleStateDictError) as e:
    timm.from_timm(state, model_name, **overrides)
  msg = str(e.value)
  assert "1 missing, 1 unexpected, 1 mis-shaped" in msg and "Nothing was converted" in msg
  assert "missing     stages.1.1.conv2b.weight (8, 8, 3, 3)" in msg
  assert "unexpected  stages.1.1.attn_last.fc1.weight (4, 32, 1, 1)" in msg
  assert "mis-shaped  head.fc.weight: given (5, 64), model (10, 64)" in msg
  # The same file is not a DeepMind-layout NFNet-F0 at full size, nor an L model of other width.
  with pytest.raises(timm.IncompatibleStateDictError, match="missing .*stages.0.0.attn_last.fc1"):
    timm.from_timm(path, "nfnet_l0")
  with pytest.raises(ValueError, match="no timm counterpart.*eca_nfnet_l0"):
    timm.from_timm(path, "nf_regnet_b0")
  params = timm.from_timm(path, model_name, **overrides)
  params.pop("NFNetL/~/final_conv")
  with pytest.raises(timm.IncompatibleStateDictError, match="missing     NFNetL/~/final_conv/w"):
    timm.to_timm(params, model_name, **overrides)


def _torch_zip(path, pickled: bytes, storages=None):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickled)
    z.writestr("archive/byteorder", "little")
    for key, raw in (storages or {}).items():
      z.writestr(f"archive/data/{key}", raw)


def test_pth_state_dict_is_read_without_torch():
  """torch.save's zip format (tensors.pth, written by torch): views, offsets and dtypes come back."""
  state = timm.read_state_dict(DATA / "tensors.pth")
  base = np.arange(12, dtype=np.float32).reshape(3, 4)
  assert sorted(state) == ["contiguous", "half", "offset", "param", "transposed"]
  np.testing.assert_array_equal(state["contiguous"], base)
  np.testing.assert_array_equal(state["transposed"], base.T)
  np.testing.assert_array_equal(state["offset"], base[1:, 2:])
  assert state["half"].dtype == np.float16 and state["param"].shape == (2,)
  np.testing.assert_array_equal(state["half"], base[0].astype(np.float16))


def test_hostile_pth_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  # A pickle that would call os.system when unpickled with torch.load(weights_only=False).
  payload = (b"\x80\x02cos\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
             + f"touch {marker}".encode() + b"\x85R.")
  path = tmp_path / "evil.pth"
  _torch_zip(path, payload)
  with pytest.raises(timm.UnsafeCheckpointError, match="refusing to unpickle 'os.system'"):
    timm.read_state_dict(path)
  with pytest.raises(timm.UnsafeCheckpointError, match="os.system"):
    pretrained.load(path, like="eca_nfnet_l0")
  assert not marker.exists()
  # A bare (non-zip) pickle with the same payload goes to the DeepMind reader, which refuses it too.
  bare = tmp_path / "evil.bin"
  bare.write_bytes(payload)
  with pytest.raises(pretrained.UnsafePickleError, match="os.system"):
    pretrained.load(bare)
  assert not marker.exists()


@pytest.mark.slow
def test_convert_script_round_trip(tmp_path):
  """scripts/convert.py: our npz → timm safetensors → npz, bit-identical, for full-size ECA-NFNet-L0."""
  name = "eca_nfnet_l0"
  tree = timm.expected_tree(name)
  rng = np.random.default_rng(0)
  params = {m: {p: rng.standard_normal(v.shape, dtype=np.float32) for p, v in d.items()}
            for m, d in tree.items()}
  pretrained.save(tmp_path / "ours.npz", params)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), *a],
                                  env=env, capture_output=True, text=True, timeout=300)
  r = run(f"--pretrained={tmp_path / 'ours.npz'}", f"--model={name}", "--to=timm",
          f"--out={tmp_path / 'eca.safetensors'}")
  assert r.returncode == 0, r.stderr
  assert "wrote 185 tensors for timm's eca_nfnet_l0" in r.stdout
  assert {k: v.shape for k, v in timm.read_state_dict(tmp_path / "eca.safetensors").items()} == {
      k: tuple(s) for k, s in LAYOUTS[name]}
  r = run(f"--pretrained={tmp_path / 'eca.safetensors'}", f"--model={name}", "--to=npz",
          f"--out={tmp_path / 'back.npz'}")
  assert r.returncode == 0, r.stderr
  back = pretrained.load(tmp_path / "back.npz", like=name)
  assert all(_bits(back[m][p]) == _bits(params[m][p]) for m in params for p in params[m])
  r = run(f"--pretrained={tmp_path / 'eca.safetensors'}", "--model=nfnet_l0", "--to=npz",
          f"--out={tmp_path / 'bad.npz'}")
  assert r.returncode == 2 and "do not fit the model" in r.stderr and not (tmp_path / "bad.npz").exists()
  r = run(f"--pretrained={tmp_path / 'ours.npz'}", f"--model={name}", "--to=timm",
          f"--out={tmp_path / 'x.pth'}")
  assert r.returncode == 2 and "name the output *.safetensors" in r.stderr
