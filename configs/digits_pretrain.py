"""The quickstart network pretrained on an image folder of digits (the fine-tuning study's source).

NF-ResNet-50's blocks, one per stage, quarter width, at 32x32, with quickstart's optimizer (SGD
Nesterov + AGC, lr 0.1 at batch 64, EMA 0.99), on `folder:DIR` written by
scripts/write_digit_folders.py (by default digits 0-4). The input pipeline is the image-folder
one, the same the fine-tuning runs use, so only the classes change between pretraining and
fine-tuning; augment 'nocrop' (flip only): an Inception crop of 8-100% of a digit that fills the
frame trains on zoomed-in strokes (pretraining reached 54% on digits 0-4 with it). Evaluation crops the central 87.5% ('crop_resize'):
DeepMind's 'resize_crop_32' resizes to S+32 = 64 and keeps the central 32, half the digit.

  python scripts/write_digit_folders.py --out=data/digits_0_4 --digits=0,1,2,3,4
  python scripts/train.py --config=configs/digits_pretrain.py --workdir=runs/digits_0_4 \
      --config.dataset=folder:data/digits_0_4
"""

import ml_collections

from nfnet_jax.train import base_config

MODEL_KWARGS = {'depth': (1, 1, 1, 1), 'width': 1, 'stochdepth_rate': 0.0, 'drop_rate': 0.0}


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model = 'nf_resnet50'
  c.model_kwargs = ml_collections.ConfigDict(MODEL_KWARGS)
  c.dataset = 'folder:data/digits_0_4'
  c.batch_size = 64
  c.num_epochs = 30.0
  c.image_size = 32
  c.eval_image_size = 32
  c.eval_preprocess = 'crop_resize'   # resize_crop_32 would keep only the central half at 32 px
  c.augment = 'nocrop'               # the digit fills the 32 px frame: flip only, no Inception crop
  c.label_smoothing = 0.1
  c.bf16 = False
  c.ema_decay = 0.99
  c.optimizer.lr = 0.4            # per 256 examples: 0.1 at batch 64
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 5e-5
  c.optimizer.clipping = 0.04
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.eval_every_steps = 200
  return c
