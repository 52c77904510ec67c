"""Fine-tune a pretrained model on your own images: configs/finetune.py:MODEL (default nfnet_f0).

  python scripts/train.py --config=configs/finetune.py:nfnet_f0 --workdir=runs/my_f0 \
      --config.dataset=folder:/data/my_images --config.init_from=F0_haiku.npz

MODEL is any registered name (nfnet_f0 ... nfnet_f7plus, nf_regnet_b0 ..., nf_resnet50 ...).
init_from is a params file or another run's workdir; the classifier is initialised afresh when
the class count differs (init_head='auto'). Empty init_from trains from random weights. The
defaults, and why:
  - 20 epochs (total_steps overrides): a pretrained network adapts in a short schedule; BiT's
    rule gives 500 steps at batch 512 for datasets under 20k images, ~25 epochs of 10k images.
  - batch 64: own-image datasets are small (hundreds to thousands of images) and one device
    must hold it; lr is per 256 examples, so it scales with the batch.
  - SGD + Nesterov 0.9, lr 0.01 per 256 (a tenth of the pretraining peak, so the first steps with
    a random head do not wreck the pretrained features), warm-up 1 epoch, cosine to 0.
  - weight decay 0: in a short run it only pulls the weights from the pretrained solution
    toward zero (BiT fine-tunes without it); AGC 0.01 with the final weight unclipped, the recipe
    the weights were trained with (it keeps AGC on every trainable param).
  - augment 'none': Inception crop and flip only, no RandAugment/MixUp/CutMix, which need long
    schedules to pay off ('nocrop' drops the crop too, for small images whose object fills the
    frame); label smoothing 0.1 as in pretraining.
  - the model's own train/test image sizes (the pretrained filters are tuned to that scale);
    for small images set image_size/eval_image_size lower.
  - the variant's dropout, stochastic depth 0.1 (the model default, lighter than ImageNet's 0.25).
  - EMA 0.999 (about the last 1000 steps; ImageNet's 0.99999 would average the random start).
  - eval every 200 steps and at the end, checkpoint every 200.
"""

import ml_collections

from nfnet_jax import models
from nfnet_jax.train import base_config


def get_config(model: str = 'nfnet_f0') -> ml_collections.ConfigDict:
  model = model or 'nfnet_f0'
  models.get_spec(model)  # unknown names raise, listing the valid ones
  c = base_config()
  c.model = model
  c.dataset = ''                  # required: e.g. folder:/data/my_images
  c.init_from = ''                # e.g. F0_haiku.npz or runs/pretrained
  c.batch_size = 64
  c.num_epochs = 20.0
  c.augment = 'none'
  c.label_smoothing = 0.1
  c.bf16 = True
  c.ema_decay = 0.999
  c.optimizer.lr = 0.01           # per 256 examples
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 0.0
  c.optimizer.clipping = 0.01
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.eval_every_steps = 200
  return c
