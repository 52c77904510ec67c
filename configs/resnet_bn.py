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

from nfnet_jax.train import base_config

DEPTHS = (50, 101, 152, 200, 288, 600)


def get_config(depth: str = '50') -> ml_collections.ConfigDict:
  depth = int(depth or 50)
  if depth not in DEPTHS:
    raise ValueError(f'unknown ResNet depth {depth}; choose one of {DEPTHS}.')
  c = base_config()
  c.model = f'resnet{depth}'
  c.model_kwargs = ml_collections.ConfigDict({'bn_axis_name': 'batch'})
  c.dataset = 'imagenet2012'
  c.batch_size = 1024
  c.num_epochs = 90.0
  c.augment = 'none'
  c.label_smoothing = 0.1
  c.bf16 = True
  c.ema_decay = 0.99999
  c.optimizer.lr = 0.1
  c.optimizer.weight_decay = 5e-5
  c.optimizer.clipping = None
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 5000
  return c
