"""CPU convolution routes: the same sums as oneDNN's kernels, faster on this project's layers.

cyclegan/models.py reaches them only through `convolve`, `conv_transpose`, `reflect_pad` and
`bias_cancelled`. One switch (`configure`, the `--cpu_kernels` flag) turns them all off; each
route says when it is taken and why in its module. docs/performance.md has what each gains.
"""

import tensorflow as tf

from cyclegan import any_size
from cyclegan.kernels import blocks
from cyclegan.kernels import filter_gradient
from cyclegan.kernels import row_winograd
from cyclegan.kernels import winograd
from cyclegan.kernels.switch import MODES, configure, enabled, off  # noqa: F401 (the API)


def convolve(layer, x, training):
  """A models.Conv2D's convolution of x (no bias), by the route that applies, else oneDNN's."""
  shape = x.shape[1:]
  if blocks.applies(layer):
    return blocks.conv_on_2x2_blocks(x, layer.kernel)
  if row_winograd.applies(layer, shape, training):
    return row_winograd.conv_by_row_winograd(
        x, row_winograd.kernels(layer, tf.convert_to_tensor(layer.kernel), x))
  if not training and winograd.applies(layer, shape):
    return winograd.conv_by_winograd(
        x, winograd.kernels(layer, tf.convert_to_tensor(layer.kernel), x))
  if training and filter_gradient.gemm_applies(layer, shape):
    return tf.nn.conv2d(x, layer.kernel, layer.strides, padding=filter_gradient.NO_PADDING)
  if training and filter_gradient.matmul_applies(layer, shape):
    transformed = winograd.applies(layer, shape) and (
        lambda kernel, image, flipped=False: winograd.kernels(layer, kernel, image, flipped))
    return filter_gradient.conv_with_matmul_filter_gradient(
        x, layer.kernel, layer.strides[0], transformed)
  return layer.convolution_op(x, layer.kernel)


def conv_transpose(layer, x, training):
  """A 'valid' undilated models.Conv2DTranspose's transposed convolution of x (no bias)."""
  (sh, sw), (kh, kw) = layer.strides, layer.kernel_size
  shape = tf.shape(x)
  height, width = (shape[i] if x.shape[i] is None else x.shape[i] for i in (1, 2))
  out = ((height - 1) * sh + kh, (width - 1) * sw + kw, layer.filters)  # ints where known
  output_shape = (shape[0], *out)
  known = None not in x.shape[1:3]
  if training and known and filter_gradient.gemm_applies(layer, out):
    return tf.nn.conv2d_transpose(x, layer.kernel, output_shape, layer.strides,
                                  padding=filter_gradient.NO_PADDING)
  if training and known and filter_gradient.matmul_applies(layer, out):
    return filter_gradient.conv_transpose_with_matmul_filter_gradient(
        x, layer.kernel, output_shape, sh)
  return tf.nn.conv2d_transpose(x, layer.kernel, output_shape, layer.strides, padding="VALID")


def reflect_pad(x, p, training):
  """Reflect padding of both sides by p.

  Outside training (and unless switched off), one gather of the pixels in reflected order:
  the same numbers, on CPU in bf16 ~2.5x faster than MirrorPad's kernel, and one copy instead
  of two (rows, then columns). In training tf.pad: one op, and one kernel for its gradient.
  """
  if training or not enabled():
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
  shape = tf.shape(x)
  rows = any_size.reflect_indices(shape[1], p, p)
  cols = any_size.reflect_indices(shape[2], p, p)
  pixels = tf.reshape(rows[:, None] * shape[2] + cols, [-1])
  y = tf.gather(tf.reshape(x, [shape[0], -1, shape[3]]), pixels, axis=1)
  return tf.reshape(y, [shape[0], shape[1] + 2 * p, shape[2] + 2 * p, shape[3]])


def bias_cancelled(layer, training):
  """Whether to leave out `layer`'s bias: outside training (and unless switched off), where
  its output goes straight into an instance norm (instance_normalized), whose subtraction of
  each channel's mean removes any per-channel constant. The same numbers up to rounding; in
  training the bias stays, with its (zero) gradient as in the reference."""
  return layer.instance_normalized and not training and enabled()
