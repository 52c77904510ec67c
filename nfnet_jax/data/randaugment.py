"""RandAugment (Cubuk et al. 2020) in TensorFlow ops on uint8 [H, W, 3] images, no tensorflow-addons.

The op set, the magnitude-to-argument mapping (maximum level 10) and the fill value 128 are those of the
TPU/DeepMind NFNet implementation: each of `num_layers` layers applies one op drawn uniformly from
`OP_NAMES`, always, at the fixed magnitude; rotate, shear and translate get a random sign.
Cheaper formulations (about 2× less CPU per image than per-pixel where/transform versions), same outputs:
  * one `switch_case` per layer runs only the chosen op;
  * ops whose argument makes them the identity at the chosen magnitude (e.g. Color/Contrast/Brightness/
    Sharpness at magnitude 5, factor 1.0; Solarize with threshold ≥ 256) are skipped at graph build time;
  * no per-pixel `tf.where` and no per-byte `tf.gather` (both are slow on CPU): geometric ops gather
    whole pixels from an index map computed in closed form, with one extra fill pixel for "outside";
    Cutout is built by slicing and concatenation; Solarize(Add) use bitwise/uint8 arithmetic;
  * AutoContrast and Equalize work on all three channels at once (one bincount, one look-up).
Contrast blends towards the mean grey level as PIL does.
"""

import math

from nfnet_jax import extras

tf = extras.require("tensorflow", "RandAugment (nfnet_jax.data)")

MAX_LEVEL = 10.0
FILL = 128
TRANSLATE_CONST = 100.0
CUTOUT_CONST = 40.0

OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
            "Cutout", "SolarizeAdd")


def _random_sign(value):
  return tf.where(tf.random.uniform([]) < 0.5, -value, value)


def blend(degenerate, image, factor):
  """PIL ImageEnhance: degenerate + factor·(image - degenerate), clipped to [0, 255], truncated to uint8."""
  d = tf.cast(degenerate, tf.float32)
  out = d + factor * (tf.cast(image, tf.float32) - d)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _grey(image):
  """ITU-R 601-2 luma, as PIL's convert('L'), [H, W, 1] float32."""
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1, keepdims=True)


def autocontrast(image):
  """Per channel, stretch [min, max] to [0, 255] (channels with min == max are left unchanged)."""
  pixels = tf.reshape(image, [-1, 3])
  lo = tf.cast(tf.reduce_min(pixels, axis=0), tf.float32)
  hi = tf.cast(tf.reduce_max(pixels, axis=0), tf.float32)
  x = tf.cast(image, tf.float32)
  valid = hi > lo
  scale = tf.where(valid, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(valid, -lo * scale, 0.0)
  return tf.cast(tf.clip_by_value(x * scale + offset, 0.0, 255.0), tf.uint8)


def equalize(image):
  """PIL ImageOps.equalize per channel: a look-up table from the cumulative histogram."""
  idx = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  hist = tf.reshape(tf.math.bincount(tf.reshape(idx, [-1]), minlength=768, maxlength=768), [3, 256])
  top = tf.reduce_max(tf.reshape(tf.cast(image, tf.int32), [-1, 3]), axis=0)  # last non-empty bin
  last_count = tf.gather(hist, top, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
  safe_step = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(hist, axis=1) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
  identity = tf.broadcast_to(tf.range(256, dtype=tf.int32), [3, 256])
  lut = tf.where(step[:, None] == 0, identity, lut)
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), idx), tf.uint8)


def invert(image):
  return 255 - image


def posterize(image, bits: int):
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold: int):
  """Pixels ≥ threshold become 255 - pixel (= pixel XOR 255 for uint8)."""
  return tf.bitwise.bitwise_xor(image, tf.cast(image >= threshold, tf.uint8) * 255)


def solarize_add(image, addition: int, threshold: int = 128):
  """Pixels below threshold get `addition` added, saturating at 255 (addition ≥ 0)."""
  headroom = tf.minimum(tf.constant(min(addition, 255), tf.uint8), 255 - image)
  return image + tf.cast(image < threshold, tf.uint8) * headroom


def color(image, factor):
  return blend(tf.broadcast_to(_grey(image), tf.shape(image)), image, factor)


def contrast(image, factor):
  mean = tf.reduce_mean(_grey(image))
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image; the 1-pixel border is kept."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID")[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  middle = tf.concat([image[1:-1, :1], smooth, image[1:-1, -1:]], axis=1)
  degenerate = tf.concat([image[:1], middle, image[-1:]], axis=0)
  return blend(degenerate, image, factor)


def transform(image, matrix):
  """Output pixel (x, y) takes input (a0·x + a1·y + a2, b0·x + b1·y + b2) rounded to the nearest pixel;
  outside the image → 128. Same result as ImageProjectiveTransformV3 (NEAREST, CONSTANT fill)."""
  a0, a1, a2, b0, b1, b2 = [tf.cast(m, tf.float32) for m in matrix]
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  ys = tf.cast(tf.range(h), tf.float32)[:, None]
  xs = tf.cast(tf.range(w), tf.float32)[None, :]
  src_x = tf.cast(tf.floor(a0 * xs + a1 * ys + a2 + 0.5), tf.int32)
  src_y = tf.cast(tf.floor(b0 * xs + b1 * ys + b2 + 0.5), tf.int32)
  inside = tf.cast((src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h), tf.int32)
  outside_index = h * w  # the fill pixel appended below
  index = inside * (src_y * w + src_x - outside_index) + outside_index
  pixels = tf.concat([tf.reshape(image, [-1, 3]), tf.fill([1, 3], tf.constant(FILL, image.dtype))], 0)
  out = tf.reshape(tf.gather(pixels, tf.reshape(index, [-1])), shape)
  return tf.ensure_shape(out, image.shape)


def rotate(image, degrees):
  """Rotation about the image centre."""
  shape = tf.cast(tf.shape(image), tf.float32)
  h, w = shape[0] - 1.0, shape[1] - 1.0
  rad = degrees * (math.pi / 180.0)
  c, s = tf.cos(rad), tf.sin(rad)
  x_off = (w - (c * w - s * h)) / 2.0
  y_off = (h - (s * w + c * h)) / 2.0
  return transform(image, [c, -s, x_off, s, c, y_off])


def shear_x(image, level):
  return transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0])


def shear_y(image, level):
  return transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0])


def translate_x(image, pixels):
  return transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0])


def translate_y(image, pixels):
  return transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels])


def cutout(image, half_size: int):
  """A (2·half_size)² square, centred uniformly at random (clipped at the borders), set to 128."""
  shape = tf.shape(image)
  cy = tf.random.uniform([], 0, shape[0], tf.int32)
  cx = tf.random.uniform([], 0, shape[1], tf.int32)
  y1, y2 = tf.maximum(cy - half_size, 0), tf.minimum(cy + half_size, shape[0])
  x1, x2 = tf.maximum(cx - half_size, 0), tf.minimum(cx + half_size, shape[1])
  patch = tf.fill([y2 - y1, x2 - x1, shape[2]], tf.constant(FILL, image.dtype))
  middle = tf.concat([image[y1:y2, :x1], patch, image[y1:y2, x2:]], axis=1)
  return tf.ensure_shape(tf.concat([image[:y1], middle, image[y2:]], axis=0), image.shape)


def op_branches(magnitude: float):
  """name → function(image) for every op at this magnitude (None for ops that are the identity)."""
  level = magnitude / MAX_LEVEL
  enhance = level * 1.8 + 0.1
  posterize_bits = int(level * 4)
  solarize_threshold = int(level * 256)
  enhance_fn = lambda fn: None if enhance == 1.0 else (lambda im: fn(im, enhance))
  return {
      "AutoContrast": autocontrast,
      "Equalize": equalize,
      "Invert": invert,
      "Rotate": lambda im: rotate(im, _random_sign(level * 30.0)),
      "Posterize": None if posterize_bits >= 8 else (lambda im: posterize(im, posterize_bits)),
      "Solarize": None if solarize_threshold >= 256 else (lambda im: solarize(im, solarize_threshold)),
      "Color": enhance_fn(color),
      "Contrast": enhance_fn(contrast),
      "Brightness": enhance_fn(brightness),
      "Sharpness": enhance_fn(sharpness),
      "ShearX": lambda im: shear_x(im, _random_sign(level * 0.3)),
      "ShearY": lambda im: shear_y(im, _random_sign(level * 0.3)),
      "TranslateX": lambda im: translate_x(im, _random_sign(level * TRANSLATE_CONST)),
      "TranslateY": lambda im: translate_y(im, _random_sign(level * TRANSLATE_CONST)),
      "Cutout": lambda im: cutout(im, int(level * CUTOUT_CONST)),
      "SolarizeAdd": lambda im: solarize_add(im, int(level * 110)),
  }


def randaugment(image, num_layers: int, magnitude: float):
  """Applies `num_layers` ops, each drawn uniformly from OP_NAMES, to a uint8 [H, W, 3] image."""
  if image.dtype != tf.uint8:
    raise ValueError(f"randaugment expects a uint8 image, got {image.dtype}")
  ops = op_branches(magnitude)
  for _ in range(num_layers):
    choice = tf.random.uniform([], 0, len(OP_NAMES), tf.int32)
    branches = [(lambda fn=ops[name]: (fn(image) if fn is not None else image)) for name in OP_NAMES]
    image = tf.ensure_shape(tf.switch_case(choice, branches), image.shape)
  return image
