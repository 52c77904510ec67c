"""Fixture builder for tests: a miniature ImageNet in the official tar layout, prepared by tfds.

The writer lives in the library (nfnet_jax/data/mini_imagenet.py) so that scripts/benchmark.py can use it
too; tests import it from here (`import mini_imagenet`), the session fixture is `mini_imagenet` in
tests/conftest.py.
"""

from nfnet_jax.data.mini_imagenet import (build_prepared, shipped_validation_labels,  # noqa: F401
                                          write_mini_imagenet, write_realistic_mini_imagenet)


def _cache_download(data_dir, dataset, url, content):
  """Puts `content` where tfds keeps a finished download of `url` for `dataset` (the file named by
  the URL and its registered checksum, plus tfds's INFO record), so the real builder reads it
  offline. tfds trusts a cached download's INFO record and does not hash the file again."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  info = tfds.builder_cls(dataset.split("/")[0]).url_infos[url]
  path = pathlib.Path(data_dir) / "downloads" / dataset / resource.get_dl_fname(url, info.checksum)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content)
  resource.write_info_file(url, path, dataset, info.filename or path.name, info)


def prepare_real(data_dir, manual_dir, real_labels):
  """tfds's own imagenet2012_real builder over the miniature ILSVRC2012_img_val.tar in manual_dir,
  with `real_labels` (a list of label lists, one per validation file) as its real.json."""
  import json  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012_real import imagenet2012_real_dataset_builder as real
  _cache_download(data_dir, "imagenet2012_real", real._REAL_LABELS_URL, json.dumps(real_labels).encode())
  builder = tfds.builder("imagenet2012_real", data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def prepare_v2(data_dir, images, variant="matched-frequency", seed=0):
  """tfds's own imagenet_v2 builder over a miniature archive in the official layout
  (imagenetv2-<variant>-format-val/<class id>/<hash>.jpeg); images: [(class id, class index among
  the miniature's classes, num classes)], drawn like the miniature ImageNet's images."""
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet_v2 import imagenet_v2_dataset_builder as v2
  from nfnet_jax.data import mini_imagenet as lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for i, (class_id, class_index, num_classes) in enumerate(images):
      h, w = (int(rng.integers(40, 121)) for _ in range(2))
      lib._add(tar, f"{v2._TAR_TOPDIR[variant]}/{class_id}/{i:040x}.jpeg",
               lib._jpeg(lib._image(rng, class_index, num_classes, h, w, 0.0)))
  _cache_download(data_dir, "imagenet_v2", v2._IMAGENET_V2_URLS[variant], buf.getvalue())
  tfds.builder(f"imagenet_v2/{variant}", data_dir=data_dir).download_and_prepare()
