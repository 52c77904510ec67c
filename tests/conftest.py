"""Test session set-up: four host CPU devices, so pmap code runs as on a small pod; one XLA cache."""

import os
import shutil
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for this test run, shared by the xdist workers and every
# subprocess they start (they inherit the environment): the many runs of the same small configs
# compile each program once. A new run (new PYTEST_XDIST_TESTRUNUID, or pid without xdist) starts cold.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"nfnet_jax_xla_cache_{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import types  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mini_imagenet(tmp_path_factory):
  """A miniature ImageNet in the official tar layout (10 real synsets × 4 training JPEGs of varied sizes,
  ILSVRC2012_val_00000001..10.JPEG labelled by tfds's shipped list), prepared by tfds's imagenet2012
  builder. Fields: data_dir (pass as data_dir=, dataset 'imagenet2012'), manual_dir, synsets,
  train_files and val_files (file name → synset). Built once per test session (per xdist worker)."""
  import mini_imagenet as mi  # tests/mini_imagenet.py
  data_dir, manual_dir, desc = mi.build_prepared(str(tmp_path_factory.mktemp("mini_imagenet")))
  return types.SimpleNamespace(data_dir=data_dir, manual_dir=manual_dir, **desc)


@pytest.fixture(scope="session")
def mini_imagenet_dir(mini_imagenet):
  """tfds data_dir holding the prepared miniature 'imagenet2012' (40 train, 10 validation examples)."""
  return mini_imagenet.data_dir


def pytest_sessionfinish(session):
  """The process that made the XLA cache (the xdist controller, or the only process) removes it."""
  del session
  if _RUN == str(os.getpid()) and "PYTEST_XDIST_WORKER" not in os.environ:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
