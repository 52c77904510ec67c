"""Fixup ResNets (Zhang, Dauphin & Ma 2019) on ImageNet, an unnormalized baseline of the NF-ResNet paper;
argument = depth (50, 101, 152, 200, 288, 600). The model is post-activation and unnormalized,
with a zero last conv per branch, L^{-1/4}-scaled He init and scalar biases.

The same 90-epoch recipe as configs/nf_resnet.py (train.config.resnet_recipe_config): batch 1024,
SGD with Nesterov momentum 0.9, lr 0.1 x batch/256, 5 warm-up epochs, cosine decay, weight decay
5e-5, no AGC, EMA, label smoothing 0.1, stochastic depth 0.1, bfloat16 compute.

  python scripts/train.py --config=configs/fixup_resnet.py:50 --workdir=runs/fixup_resnet50 \
      --config.data_dir=$TFDS_DATA_DIR

  python scripts/evaluate.py --config=configs/fixup_resnet.py:50 --workdir=runs/fixup_resnet50 \
      --config.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from nfnet_jax.train.config import resnet_recipe_config


def get_config(depth: str = '50') -> ml_collections.ConfigDict:
  return resnet_recipe_config('fixup_resnet', depth, stochdepth_rate=0.1)
