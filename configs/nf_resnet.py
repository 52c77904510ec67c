"""NF-ResNets (Brock, De & Smith 2021a) on ImageNet: argument = depth (50, 101, 152, 200, 288, 600).

A 90-epoch ResNet-style recipe at batch 1024: SGD with Nesterov momentum 0.9, lr 0.1 x batch/256,
5 warm-up epochs, cosine decay, weight decay 5e-5, no AGC, EMA of the weights, label smoothing 0.1,
stochastic depth 0.1, the variant's dropout and bfloat16 compute; no MixUp/CutMix or RandAugment.

  python scripts/train.py --config=configs/nf_resnet.py:50 --workdir=runs/nf_resnet50 \
      --config.data_dir=$TFDS_DATA_DIR

  python scripts/evaluate.py --config=configs/nf_resnet.py:50 --workdir=runs/nf_resnet50 \
      --config.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from nfnet_jax.train.config import resnet_recipe_config


def get_config(depth: str = '50') -> ml_collections.ConfigDict:
  return resnet_recipe_config('nf_resnet', depth, stochdepth_rate=0.1)
