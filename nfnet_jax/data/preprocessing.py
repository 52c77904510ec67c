"""Per-image preprocessing in TensorFlow ops: Inception crop, resize, flip, RandAugment, normalisation."""

from nfnet_jax import extras
from nfnet_jax.data import randaugment as ra

tf = extras.require("tensorflow", "the input pipelines (nfnet_jax.data)")

# Keep TensorFlow off the accelerators: JAX owns them.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised before this import; leave it as the user set it
  pass

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_PREPROCESS = ("resize_crop_32", "crop_resize")
CROP_RESIZE_FRACTION = 0.875


def _shape(encoded, is_jpeg: bool):
  if is_jpeg:
    return tf.image.extract_jpeg_shape(encoded)
  return tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))


def _decode_crop(encoded, window, is_jpeg: bool):
  """Decodes only the window [y, x, h, w] of a JPEG (one op), or decodes then crops other formats."""
  if is_jpeg:
    return tf.io.decode_and_crop_jpeg(encoded, tf.stack(window), channels=3)
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.image.crop_to_bounding_box(image, *window)


def _center_window(shape, fraction):
  """Square window of side fraction·min(h, w) at the centre."""
  h, w = shape[0], shape[1]
  side = tf.cast(fraction * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  return [(h - side + 1) // 2, (w - side + 1) // 2, side, side]


def decode_and_random_crop(encoded, image_size: int, is_jpeg: bool = True):
  """Inception crop (Szegedy et al. 2015): area 8-100%, aspect 3/4-4/3, at most 10 tries.

  When no try fits, falls back to a centre crop of S/(S+32) of the short side (S = image_size).
  """
  shape = _shape(encoded, is_jpeg)
  begin, size, _ = tf.image.sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  center = _center_window(shape, image_size / (image_size + 32))
  window = [tf.where(failed, c, r) for c, r in zip(center, [begin[0], begin[1], size[0], size[1]])]
  return _decode_crop(encoded, window, is_jpeg)


def resize(image, image_size: int):
  """Bicubic resize to image_size², float32 clipped to [0, 255] (bicubic overshoots)."""
  image = tf.image.resize(image, [image_size, image_size], method="bicubic")
  return tf.clip_by_value(image, 0.0, 255.0)


def train_image(encoded, image_size: int, randaugment_layers: int = 0, randaugment_magnitude: float = 0,
                is_jpeg: bool = True, inception_crop: bool = True):
  """Training view of one encoded image: crop, resize, flip, optional RandAugment.

  inception_crop=False resizes the whole image (augment token 'nocrop').
  Returns uint8 [S, S, 3] when RandAugment runs (it works on uint8), else float32 in [0, 255].
  """
  if inception_crop:
    image = decode_and_random_crop(encoded, image_size, is_jpeg)
  else:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image = resize(image, image_size)
  image = tf.image.random_flip_left_right(image)
  if randaugment_layers:
    image = ra.randaugment(tf.cast(image, tf.uint8), randaugment_layers, randaugment_magnitude)
  return image


def eval_image(encoded, image_size: int, preprocess: str = "resize_crop_32", is_jpeg: bool = True):
  """Evaluation view: 'resize_crop_32' resizes to (S+32)² then centre-crops S (DeepMind's NFNet eval);
  'crop_resize' centre-crops 87.5% of the short side then resizes to S². float32 in [0, 255]."""
  if preprocess == "resize_crop_32":
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = resize(image, image_size + 32)
    return image[16:16 + image_size, 16:16 + image_size]
  if preprocess == "crop_resize":
    window = _center_window(_shape(encoded, is_jpeg), CROP_RESIZE_FRACTION)
    return resize(_decode_crop(encoded, window, is_jpeg), image_size)
  raise ValueError(f"Unknown eval preprocess {preprocess!r}; choose one of {EVAL_PREPROCESS}")


def normalize(images, dtype=tf.float32):
  """(x - ImageNet mean) / ImageNet std per channel, on any leading shape; cast to dtype."""
  scale = tf.constant([1.0 / s for s in STDDEV_RGB], tf.float32)
  shift = tf.constant([-m / s for m, s in zip(MEAN_RGB, STDDEV_RGB)], tf.float32)
  return tf.cast(tf.cast(images, tf.float32) * scale + shift, dtype)
