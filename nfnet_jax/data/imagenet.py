"""Preparing ImageNet 2012 (ILSVRC2012) with tfds's own `imagenet2012` builder from the official tars."""

from typing import Callable, Dict

from nfnet_jax import paths

TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
WHERE_TO_GET = ("ImageNet cannot be downloaded automatically: register at "
                "https://image-net.org/download-images, download ILSVRC2012_img_train.tar (~138 GB) and "
                "ILSVRC2012_img_val.tar (~6.3 GB) from the ILSVRC2012 page, and put both in that folder.")


def missing_tars(manual_dir: str):
  """The official tars that are not in manual_dir, as full paths."""
  return [paths.join(manual_dir, f) for f in TARS.values() if not paths.exists(paths.join(manual_dir, f))]


def prepare_imagenet(manual_dir: str, data_dir: str, log: Callable[[str], None] = print) -> Dict[str, int]:
  """Runs tfds's imagenet2012 builder on the tars in manual_dir, writing TFRecords under data_dir.

  Returns examples per split. Does nothing (and says so) when data_dir already holds the prepared dataset.
  Raises FileNotFoundError naming any missing tar, where it is expected and where to get it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  manual_dir, data_dir = paths.expand(manual_dir), paths.expand(data_dir)
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  if builder.is_prepared():
    log(f"imagenet2012 is already prepared in {builder.data_dir}; nothing to do.")
    return {k: v.num_examples for k, v in builder.info.splits.items()}
  missing = missing_tars(manual_dir)
  if missing:
    raise FileNotFoundError(
        "Missing " + " and ".join(paths.basename(m) for m in missing) + ": expected at "
        + ", ".join(missing) + ". " + WHERE_TO_GET)
  log(f"Preparing imagenet2012 from {manual_dir} into {data_dir} (tfds shows progress per split).")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return {k: v.num_examples for k, v in builder.info.splits.items()}
