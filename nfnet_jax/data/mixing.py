"""Augmentation strings and batch mixing (MixUp, CutMix) as jnp ops for the jitted train step.

MixUp: Zhang et al. 2018, x = λ·x_i + (1-λ)·x_j, y likewise, λ ~ Beta(α, α).
CutMix: Yun et al. 2019, a box of the partner image is pasted in, labels weighted by the pasted area.
NFNet recipe (Brock et al. 2021, Sec. 4 / App. D): MixUp (α = 0.2) on one half of the batch, CutMix on the
other. Each example's partner is the example at the mirrored position of the (already shuffled) batch.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp

_AUGMENT_HELP = ("an augment string is 'none' or '_'-joined parts among 'mixup' (optionally followed by "
                 "its α, e.g. 'mixup_0.4'), 'cutmix', 'nocrop' (no Inception crop) and 'randaugment_<LMM>' (L layers, magnitude MM, "
                 "e.g. 'randaugment_405'; a value below 100 means 2 layers), e.g. "
                 "'cutmix_mixup_randaugment_405'")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """What `parse_augment` read: per-image RandAugment (input pipeline) and batch mixing (train step)."""
  mixup: bool = False
  cutmix: bool = False
  mixup_alpha: float = 0.2
  randaugment_layers: int = 0
  randaugment_magnitude: int = 0
  inception_crop: bool = True   # 'nocrop': resize the whole image instead (small, centred objects)

  @property
  def randaugment(self) -> bool:
    return self.randaugment_layers > 0

  @property
  def mixing(self) -> bool:
    return self.mixup or self.cutmix


def parse_augment(augment: str) -> AugmentSpec:
  """Reads an augment string such as 'cutmix_mixup_randaugment_405' or 'none'."""
  if not isinstance(augment, str):
    raise ValueError(f"augment must be a string; got {augment!r}: {_AUGMENT_HELP}")
  text = augment.strip().lower()
  if text in ("", "none"):
    return AugmentSpec()
  tokens = text.split("_")
  fields = {}
  i = 0
  while i < len(tokens):
    tok = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    if tok == "mixup" and "mixup" not in fields:
      fields["mixup"] = True
      if nxt is not None and re.fullmatch(r"\d+(\.\d*)?|\.\d+", nxt):
        fields["mixup_alpha"] = float(nxt)
        if fields["mixup_alpha"] <= 0:
          raise ValueError(f"MixUp α must be > 0 in {augment!r}")
        i += 1
    elif tok == "cutmix" and "cutmix" not in fields:
      fields["cutmix"] = True
    elif tok == "nocrop" and "inception_crop" not in fields:
      fields["inception_crop"] = False
    elif tok == "randaugment" and "randaugment_layers" not in fields:
      if nxt is None or not nxt.isdigit():
        raise ValueError(f"'randaugment' needs a level such as 405 in {augment!r}: {_AUGMENT_HELP}")
      value = int(nxt)
      layers, magnitude = (value // 100, value % 100) if value >= 100 else (2, value)
      if magnitude <= 0 or magnitude > 30:
        raise ValueError(f"RandAugment magnitude must be in 1..30, got {magnitude} in {augment!r}")
      fields["randaugment_layers"], fields["randaugment_magnitude"] = layers, magnitude
      i += 1
    else:
      raise ValueError(f"Cannot read {tok!r} in augment {augment!r}: {_AUGMENT_HELP}")
    i += 1
  return AugmentSpec(**fields)


def cutmix_boxes(rng, batch_size: int, height: int, width: int):
  """Random CutMix boxes: centre uniform over the image, side ratio √(1-u), u ~ U(0, 1), clipped.

  Returns (mask [B, H, W] bool, True inside the box; area [B] float32, the box's fraction of the image).
  """
  k_y, k_x, k_u = jax.random.split(rng, 3)
  cy = jax.random.randint(k_y, (batch_size,), 0, height)
  cx = jax.random.randint(k_x, (batch_size,), 0, width)
  side = jnp.sqrt(1.0 - jax.random.uniform(k_u, (batch_size,)))
  half_h = (side * height).astype(jnp.int32) // 2
  half_w = (side * width).astype(jnp.int32) // 2
  y1, y2 = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
  x1, x2 = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  mask = ((rows >= y1[:, None, None]) & (rows < y2[:, None, None]) &
          (cols >= x1[:, None, None]) & (cols < x2[:, None, None]))
  area = ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (height * width)
  return mask, area


def mix_batch(rng, images, labels, num_classes: int, spec: AugmentSpec):
  """MixUp on the first half of the batch and CutMix on the second (or one of them on all of it).

  Args:
    rng: a jax PRNG key.
    images: [B, H, W, C] float32 or bfloat16.
    labels: [B] int class indices.
    num_classes: width of the returned targets.
    spec: from `parse_augment`; without mixing the images are returned as they are.

  Returns:
    (images of the same shape and dtype, targets [B, num_classes] float32 whose rows sum to 1).
    Example i is mixed with example B-1-i; its own label gets weight λ (MixUp) or 1 - pasted area (CutMix).
  """
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if not spec.mixing:
    return images, onehot
  batch, height, width = images.shape[:3]
  x = images.astype(jnp.float32)
  partner_x, partner_y = x[::-1], onehot[::-1]
  n_mixup = batch if not spec.cutmix else (batch // 2 if spec.mixup else 0)
  k_mix, k_cut = jax.random.split(rng)
  parts_x, partner_w = [], []
  if n_mixup:
    lam = jax.random.beta(k_mix, spec.mixup_alpha, spec.mixup_alpha, (n_mixup,))
    w = (1.0 - lam)[:, None, None, None]
    parts_x.append((1.0 - w) * x[:n_mixup] + w * partner_x[:n_mixup])
    partner_w.append(1.0 - lam)
  if batch - n_mixup:
    mask, area = cutmix_boxes(k_cut, batch - n_mixup, height, width)
    parts_x.append(jnp.where(mask[..., None], partner_x[n_mixup:], x[n_mixup:]))
    partner_w.append(area)
  mixed = jnp.concatenate(parts_x, axis=0)
  w = jnp.concatenate(partner_w, axis=0)[:, None]
  targets = (1.0 - w) * onehot + w * partner_y
  return mixed.astype(images.dtype), targets
