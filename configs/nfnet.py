"""NFNet-F0 ... F7 and F0+ ... F7+ on ImageNet with the NFNet paper's recipe (Brock et al. 2021b).

Batch 4096 for 360 epochs; SGD with Nesterov momentum 0.9, lr 0.1 x batch/256 with 5 warm-up
epochs and cosine decay, weight decay 2e-5, AGC 0.01 (eps 1e-3, final linear weight unclipped);
EMA 0.99999 with warm-up min(decay, (1+t)/(10+t)); label smoothing 0.1; RandAugment (F0: 405,
F1-F2: 410, F3 and larger: 415) with MixUp and CutMix; stochastic depth 0.25; the variant's dropout
and image sizes; bfloat16 compute.

Train F0 (batch 4096 = e.g. 32 devices x 4 micro-batches x 32 images):

  python scripts/train.py --config=configs/nfnet.py:F0 --workdir=runs/nfnet_f0 \
      --config.data_dir=$TFDS_DATA_DIR --config.grad_accum_steps=4

Evaluate the checkpoint it wrote (params and EMA params, at the variant's test size) on ImageNet
validation, ImageNet-ReaL and ImageNet-V2 (the last two when prepared):

  python scripts/evaluate.py --config=configs/nfnet.py:F0 --workdir=runs/nfnet_f0 \
      --config.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from nfnet_jax.evals import imagenet_evals
from nfnet_jax.train import base_config

VARIANTS = tuple(f'F{i}' for i in range(8)) + tuple(f'F{i}+' for i in range(8))


def model_name(variant: str) -> str:
  """'F0' -> 'nfnet_f0', 'F3+' -> 'nfnet_f3plus'."""
  return 'nfnet_' + variant.lower().replace('+', 'plus')


def randaugment_level(variant: str) -> int:
  """RandAugment magnitude by depth, as in the paper: F0 5, F1-F2 10, F3 and larger 15."""
  depth = int(variant[1])
  return 5 if depth == 0 else 10 if depth <= 2 else 15


def get_config(variant: str = 'F0') -> ml_collections.ConfigDict:
  variant = (variant or 'F0').upper().replace('PLUS', '+')
  if variant not in VARIANTS:
    raise ValueError(f'unknown NFNet variant {variant!r}; choose one of {", ".join(VARIANTS)}.')
  c = base_config()
  c.model = model_name(variant)
  c.model_kwargs = ml_collections.ConfigDict({'stochdepth_rate': 0.25})
  c.dataset = 'imagenet2012'
  c.batch_size = 4096
  c.num_epochs = 360.0
  c.augment = f'cutmix_mixup_randaugment_4{randaugment_level(variant):02d}'
  c.label_smoothing = 0.1
  c.bf16 = True
  c.ema_decay = 0.99999
  c.optimizer.lr = 0.1           # per 256 examples; scaled by batch_size / 256
  c.optimizer.warmup_epochs = 5
  c.optimizer.clipping = 0.01
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 5000
  c.evals = imagenet_evals()     # val; real and v2 when prepared (or evals.real.real_labels=real.json)
  return c
