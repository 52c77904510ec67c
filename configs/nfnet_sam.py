"""NFNet + SAM on ImageNet: the NFNet paper's strongest model, NFNet-F6 + SAM (86.5% top-1; Brock et al.
2021b, Fig. 1 caption: "We further improve on this using Sharpness Aware Minimization (Foret et al., 2021)
to achieve 86.5% top-1 accuracy"). Argument = variant (F6 by default).

The variant's recipe from configs/nfnet.py (batch 4096, 360 epochs, Nesterov SGD lr 0.1 x batch/256,
AGC 0.01, EMA, label smoothing, RandAugment + MixUp + CutMix, stochastic depth 0.25) plus SAM:
optimizer.sam_rho = 0.05 with the ascent step taken per device micro-batch (sam_mode='device',
m-sharpness). rho 0.05 is Foret et al.'s ImageNet value (Sec. 3.1); the NFNet paper's own rho could not
be looked up where this file was written, so check it against the paper's appendix before a real run.
Each step costs two forward-backward passes.

  python scripts/train.py --config=configs/nfnet_sam.py:F6 --workdir=runs/nfnet_f6_sam \
      --config.data_dir=$TFDS_DATA_DIR --config.grad_accum_steps=8

  python scripts/evaluate.py --config=configs/nfnet_sam.py:F6 --workdir=runs/nfnet_f6_sam \
      --config.data_dir=$TFDS_DATA_DIR
"""

import importlib.util
import os

import ml_collections


def _nfnet_config(variant: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'nfnet.py')
  spec = importlib.util.spec_from_file_location('configs_nfnet', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(variant: str = 'F6') -> ml_collections.ConfigDict:
  c = _nfnet_config(variant or 'F6')
  c.optimizer.sam_rho = 0.05
  c.optimizer.sam_mode = 'device'
  return c
