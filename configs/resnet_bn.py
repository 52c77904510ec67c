"""The BatchNorm ResNet baseline (He et al. 2016; Ioffe & Szegedy 2015) the NF papers compare to.

Batch statistics are computed across every device of every host (model kwarg
bn_axis_name='batch', the trainer's pmap axis), so the effective BN batch is the global batch.
Recipe as for NF-ResNets: SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs, cosine decay,
weight decay 5e-5, label smoothing 0.1, no AGC, bfloat16 compute.

  python scripts/train.py --config=configs/resnet_bn.py:50 --workdir=runs/resnet50 \
      --config.data_dir=$TFDS_DATA_DIR

  python scripts/evaluate.py --config=configs/resnet_bn.py:50 --workdir=runs/resnet50 \
      --config.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from nfnet_jax.train.config import resnet_recipe_config


def get_config(depth: str = '50') -> ml_collections.ConfigDict:
  return resnet_recipe_config('resnet', depth, bn_axis_name='batch')
