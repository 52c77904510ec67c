"""Tests for nfnet_jax.pretrained: safe reading of released checkpoints, flat npz round trip, fit checks."""

import functools
import os
import pickle

import dill
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet_jax import pretrained


class _Block(hk.Module):

  def __init__(self, name):
    super().__init__(name=name)
    self.conv0 = hk.Conv2D(4, 1, name="conv0")  # made in __init__, so its path is 'nf_block/~/conv0'

  def __call__(self, x):
    gain = hk.get_parameter("skip_gain", [], init=jnp.zeros)
    return x + gain * self.conv0(x)


@functools.lru_cache(maxsize=1)
def _tiny_haiku_params():

  def forward(x):
    x = hk.Conv2D(4, 3, name="stem_conv0")(x)
    x = _Block(name="nf_block")(x)
    return hk.Linear(3, name="linear")(jnp.mean(x, axis=(1, 2)))

  params = jax.jit(hk.without_apply_rng(hk.transform(forward)).init)(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))
  return {m: {n: np.asarray(v) for n, v in d.items()} for m, d in params.items()}


def _tiny_params():
  """A real Haiku params tree with the two-level structure and '~' paths of the NFNet checkpoints (a fresh copy)."""
  return {m: {n: v.copy() for n, v in d.items()} for m, d in _tiny_haiku_params().items()}


def _assert_same(a, b):
  assert sorted(a) == sorted(b)
  for m in a:
    assert sorted(a[m]) == sorted(b[m])
    for n in a[m]:
      np.testing.assert_array_equal(a[m][n], b[m][n])
      assert np.asarray(a[m][n]).dtype == b[m][n].dtype


def test_flat_npz_round_trip(tmp_path):
  params = _tiny_params()
  assert any("~" in m for m in params)
  path = tmp_path / "tiny.npz"
  pretrained.save(path, params)
  with np.load(path, allow_pickle=False) as npz:  # flat 'module_path/param_name' keys
    assert "nf_block/~/conv0/w" in npz.files and "nf_block/skip_gain" in npz.files
  loaded = pretrained.load(path, like=params)
  _assert_same(params, loaded)
  assert os.listdir(tmp_path) == ["tiny.npz"]  # no temporary file left behind


def test_save_replaces_existing_file_atomically(tmp_path):
  params = _tiny_params()
  path = tmp_path / "p.npz"
  pretrained.save(path, {"a": {"w": np.zeros(2, np.float32)}})
  pretrained.save(path, params)
  _assert_same(params, pretrained.load(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_dill_pickle_written_like_deepmind_release(tmp_path, protocol):
  params = _tiny_params()
  params["nf_block"]["skip_gain"] = np.float32(0.25)  # numpy scalars occur too
  path = tmp_path / "F0_haiku.npz"  # the released files carry .npz names but are dill pickles
  with open(path, "wb") as f:
    dill.dump(params, f, protocol=protocol)
  loaded = pretrained.load(path)
  assert loaded["nf_block"]["skip_gain"].shape == () and loaded["nf_block"]["skip_gain"] == np.float32(0.25)
  del params["nf_block"]["skip_gain"], loaded["nf_block"]["skip_gain"]
  _assert_same(params, loaded)


class _Hostile:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("dumper", [pickle, dill])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, dumper):
  marker = tmp_path / "pwned"
  path = tmp_path / "F0_haiku.npz"
  with open(path, "wb") as f:
    dumper.dump({"linear": {"w": np.ones(2, np.float32), "b": _Hostile(marker)}}, f)
  with pytest.raises(pretrained.UnsafePickleError, match=r"refusing to unpickle '(posix|os|nt)\.system'"):
    pretrained.load(path)
  assert not marker.exists()
  # Sanity check that the file really is hostile: an unrestricted unpickler would have run the command.
  with open(path, "rb") as f:
    pickle.load(f)
  assert marker.exists()


def test_pickle_of_arbitrary_object_is_refused(tmp_path):
  path = tmp_path / "x.pkl"
  with open(path, "wb") as f:
    pickle.dump({"m": {"w": np.ones(1)}, "extra": pytest.raises}, f)
  with pytest.raises(pretrained.UnsafePickleError, match="only numpy arrays"):
    pretrained.load(path)


def test_object_arrays_and_wrong_structure_are_refused(tmp_path):
  path = tmp_path / "obj.pkl"
  with open(path, "wb") as f:
    pickle.dump({"m": {"w": np.array([1, "a"], dtype=object)}}, f)
  with pytest.raises(ValueError, match="m/w .*not a numeric numpy array"):
    pretrained.load(path)
  with open(path, "wb") as f:
    pickle.dump([np.ones(3)], f)
  with pytest.raises(ValueError, match="expected a dict"):
    pretrained.load(path)
  (tmp_path / "junk").write_bytes(b"hello")
  with pytest.raises(ValueError, match="neither an .npz"):
    pretrained.load(tmp_path / "junk")


def test_mismatched_file_names_every_offending_key(tmp_path):
  params = _tiny_params()
  bad = {m: dict(d) for m, d in params.items()}
  del bad["linear"]["b"]  # missing
  bad["nf_block/~/conv0"]["w"] = np.zeros((3, 3, 4, 4), np.float32)  # mis-shaped (model: 1x1)
  bad["extra_module"] = {"w": np.zeros((5, 6), np.float32)}  # unexpected
  path = tmp_path / "bad.npz"
  pretrained.save(path, bad)
  expected = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  with pytest.raises(pretrained.IncompatibleParamsError) as info:
    pretrained.load(path, like=expected)
  msg = str(info.value)
  assert "1 missing, 1 unexpected, 1 mis-shaped" in msg
  assert "missing     linear/b (3)" in msg
  assert "unexpected  extra_module/w (5, 6)" in msg
  assert "mis-shaped  nf_block/~/conv0/w: file (3, 3, 4, 4), model (1, 1, 4, 4)" in msg
  pretrained.check_compatible(params, expected)  # the right tree passes


def test_save_rejects_names_that_cannot_round_trip(tmp_path):
  with pytest.raises(ValueError, match="contains '/'"):
    pretrained.save(tmp_path / "x.npz", {"m": {"a/b": np.ones(1)}})
  assert not list(tmp_path.iterdir())


def test_load_checks_against_a_registered_model_by_name(tmp_path):
  from nfnet_jax import models
  model = models.create("nf_regnet_b0")
  shapes, _ = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=True),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  params = {m: {n: np.zeros(v.shape, v.dtype) for n, v in d.items()} for m, d in shapes.items()}
  path = tmp_path / "b0.npz"
  pretrained.save(path, params)
  assert pretrained.load(path, like="nf_regnet_b0").keys() == params.keys()
  params["NF_RegNet/~/linear"]["w"] = np.zeros((960, 10), np.float32)  # a 10-class head
  pretrained.save(path, params)
  with pytest.raises(pretrained.IncompatibleParamsError,
                     match=r"mis-shaped  NF_RegNet/~/linear/w: file \(960, 10\), model \(960, 1000\)"):
    pretrained.load(path, like="nf_regnet_b0")
