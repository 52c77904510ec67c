"""Quickstart: a small NF-ResNet on scikit-learn's 8x8 handwritten digits, on a CPU in minutes.

Digits (1,797 real images shipped with scikit-learn, no download) are upsampled to 32x32. The
model is NF-ResNet-50's architecture with one block per stage and a quarter of its width, trained
with the NFNet optimizer (SGD Nesterov + AGC) and EMA; it reaches >= 97% validation top-1 for
every seed tried (0-4).

Why clip_eps is 0.1 here, not the paper's 1e-3: every residual branch ends in a SkipInit gain that
starts at 0, and AGC clips a parameter's gradient to clipping * max(|g|, eps). With eps = 1e-3 a
gain could move by only ~4e-5 per step (lr 0.1, momentum included), so the branches stayed shut for
hundreds of steps while only the strided 1x1 shortcuts (which see one corner of the 32x32 image)
learned, and some seeds never recovered (seed 4: 46%). eps = 0.1 lets the gains (and the
zero-initialised biases) move 100x faster; conv units, whose norms are 0.48-1.4 at initialisation,
clip as before. Seeds 0-4 then reached 100.0, 99.0, 98.7, 99.7 and 99.3% (was 92, 99, 96, 97, 46).

  python scripts/train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python scripts/evaluate.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections

from nfnet_jax.train import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model = 'nf_resnet50'
  c.model_kwargs = ml_collections.ConfigDict(
      {'depth': (1, 1, 1, 1), 'width': 1, 'stochdepth_rate': 0.0, 'drop_rate': 0.0})
  c.dataset = 'digits'
  c.batch_size = 64
  c.num_epochs = 30.0
  c.image_size = 32
  c.eval_image_size = 32
  c.augment = 'none'
  c.label_smoothing = 0.1
  c.bf16 = False
  c.ema_decay = 0.99
  c.optimizer.lr = 0.4            # per 256 examples: 0.1 at batch 64
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 5e-5
  c.optimizer.clipping = 0.04
  c.optimizer.clip_eps = 0.1       # lets the zero-initialised SkipInit gains open (see above)
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.eval_every_steps = 200
  return c
