"""The quickstart network pretrained on an image folder of digits (the fine-tuning study's source).

configs/quickstart.py (NF-ResNet-50's blocks, one per stage, at 32x32; its optimizer, schedule and
EMA) with three changes, on `folder:DIR` written by
scripts/write_digit_folders.py (by default digits 0-4). The input pipeline is the image-folder
one, the same the fine-tuning runs use, so only the classes change between pretraining and
fine-tuning; augment 'nocrop' (flip only): an Inception crop of 8-100% of a digit that fills the
frame trains on zoomed-in strokes (pretraining reached 54% on digits 0-4 with it). Evaluation crops the central 87.5% ('crop_resize'):
DeepMind's 'resize_crop_32' resizes to S+32 = 64 and keeps the central 32, half the digit.

  python scripts/write_digit_folders.py --out=data/digits_0_4 --digits=0,1,2,3,4
  python scripts/train.py --config=configs/digits_pretrain.py --workdir=runs/digits_0_4 \
      --config.dataset=folder:data/digits_0_4
"""

import importlib.util
import os

import ml_collections


def _quickstart():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quickstart.py')
  spec = importlib.util.spec_from_file_location('nfnet_jax_configs_quickstart', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config() -> ml_collections.ConfigDict:
  c = _quickstart().get_config()
  c.dataset = 'folder:data/digits_0_4'
  c.eval_preprocess = 'crop_resize'   # resize_crop_32 would keep only the central half at 32 px
  c.augment = 'nocrop'               # the digit fills the 32 px frame: flip only, no Inception crop
  return c
