"""A generator at any image size: reflect-padded to a multiple of 4 and cropped back.

The generator downsamples twice, so its sides must be multiples of 4 (and at least MIN_SIDE for
its innermost reflect padding). Every export (SavedModel, TFLite, ONNX) runs these in its graph.
"""

import tensorflow as tf

from cyclegan import images as images_lib

MIN_SIDE = 8  # Smallest side the generator's innermost reflect padding accepts (2 after /4).


def reflect_indices(n, before, after):
  """Indices of a reflect-padded axis of length n, for any pad amount (also larger than n)."""
  positions = tf.range(-before, n + after)
  period = tf.maximum(2 * (n - 1), 1)
  # Reflection is symmetric about 0, so fold |position|: a non-negative modulo means the same in
  # every runtime (ONNX Runtime's integer Mod gives -1 for -1 mod p, and Gather reads -1 as last).
  folded = tf.math.floormod(tf.abs(positions), period)
  return tf.where(folded >= n, period - folded, folded)


def pad_to_multiple(images, multiple=4, min_side=MIN_SIDE):
  """Reflect-pads [N, H, W, C] so both sides are multiples of `multiple` and >= min_side."""
  shape = tf.shape(images)
  padded = []
  for axis, n in ((1, shape[1]), (2, shape[2])):
    target = tf.maximum((n + multiple - 1) // multiple * multiple, min_side)
    before = (target - n) // 2
    padded.append((axis, reflect_indices(n, before, target - n - before), before))
  for axis, indices, _ in padded:
    images = tf.gather(images, indices, axis=axis)
  return images, padded[0][2], padded[1][2]


def translate(generator, images):
  """float32 [N, H, W, 3] in [-1, 1], any H and W: padded for the generator, cropped back."""
  shape = tf.shape(images)
  padded, top, left = pad_to_multiple(images)
  out = tf.cast(generator(padded, training=False), tf.float32)
  return out[:, top:top + shape[1], left:left + shape[2], :]


def translate_uint8(generator, images):
  """The uint8 RGB contract of every export: [N, H, W, 3] in, the same shape out."""
  return images_lib.through_unit_range(lambda x: translate(generator, x), images)
