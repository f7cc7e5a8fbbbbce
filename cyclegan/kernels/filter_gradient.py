"""Training: filter gradients that avoid oneDNN's slow CPU kernels for them.

Two routes, chosen per layer by the gradient's image operand (height, width, channels): the
input of a convolution, the output of a transposed one.
- gemm: float32 3x3 stride 2 on large images. oneDNN's float32 filter-gradient kernel for NHWC
  falls off a cliff there (the full model at 256 px: 73 vs 21 ms for down0, 2.4-3.6x on all
  four); an explicit all-zero padding (NO_PADDING) keeps TF's own im2col + GEMM kernel.
- matmul: one matmul per kernel tap. oneDNN's bf16 filter gradient is an older kernel than its
  forward one (jit_bf16, not brgemm); its fp32 one loses at stride 1 with 128+ channels.
"""

import tensorflow as tf

from cyclegan.kernels import switch
from cyclegan.kernels import winograd

# An explicit all-zero padding is "valid" padding, but TF leaves such convolutions' filter
# gradient to its own im2col + GEMM kernel instead of rewriting it to oneDNN's.
NO_PADDING = [[0, 0]] * 4


def gemm_applies(layer, image_shape):
  """float32 3x3 stride 2 whose image operand holds 2M+ values of 64+ channels, on a CPU.

  Only float32: TF's GEMM kernel has no bf16 path (40x slower). At 128 px, and with 32 or
  fewer channels, the two kernels are even.
  """
  h, w, channels = image_shape
  return (switch.on_cpu(layer) and layer.compute_dtype == "float32" and
          tuple(layer.kernel_size) == (3, 3) and tuple(layer.strides) == (2, 2) and
          None not in image_shape and channels >= 64 and h * w * channels >= 2**21)


def matmul_applies(layer, image_shape):
  """On a CPU: stride 1 with 128+ channels in and out (the residual convolutions, the
  discriminator's stride-1 layer), and in bf16 stride 2 with 64+ channels in the image
  operand (the generator's down and up convolutions, the discriminator's but its first).

  The matmuls lose at stride 1 with 64 channels and at stride 2 with 3; fp32 at stride 2
  keeps gemm (by matmuls 87 vs 21 ms for down0 at 256 px).
  """
  if (not switch.on_cpu(layer) or layer.compute_dtype not in ("bfloat16", "float32") or
      None in image_shape):
    return False
  channels = image_shape[-1]
  if tuple(layer.strides) == (1, 1):
    return channels >= 128 and layer.filters >= 128
  return layer.compute_dtype == "bfloat16" and tuple(layer.strides) == (2, 2) and channels >= 64


def conv_with_matmul_filter_gradient(x, kernel, stride, transformed=None):
  """A 'valid' convolution whose filter gradient is filter_gradient_by_taps; with
  `transformed` (3x3 stride 1; (kernel, image, flipped) -> Winograd kernels, as
  winograd.kernels): its output and input gradient by winograd.conv_by_winograd, the input
  gradient as the 'valid' convolution of the zero-padded output gradient with the kernel
  turned half round."""
  @tf.custom_gradient
  def convolve(x, kernel):
    def gradient(dy):
      if transformed:
        dx = winograd.conv_by_winograd(tf.pad(dy, [[0, 0], [2, 2], [2, 2], [0, 0]]),
                                       transformed(kernel, dy, flipped=True))
      else:
        dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                            out_backprop=dy, strides=[1, stride, stride, 1],
                                            padding="VALID")
      return dx, filter_gradient_by_taps(x, dy, tuple(kernel.shape[:2]), stride)
    if transformed:
      return winograd.conv_by_winograd(x, transformed(kernel, x)), gradient
    return tf.nn.conv2d(x, kernel, stride, "VALID"), gradient

  return convolve(x, kernel)


def conv_transpose_with_matmul_filter_gradient(x, kernel, output_shape, stride):
  """A 'valid' transposed convolution whose filter gradient is filter_gradient_by_taps (the
  convolution's, with input and output gradient in each other's place)."""

  @tf.custom_gradient
  def convolve(x, kernel):
    def gradient(dy):
      dx = tf.nn.conv2d(dy, kernel, stride, "VALID")
      return dx, filter_gradient_by_taps(dy, x, tuple(kernel.shape[:2]), stride)
    return tf.nn.conv2d_transpose(x, kernel, output_shape, stride, padding="VALID"), gradient

  return convolve(x, kernel)


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def filter_gradient_by_taps(x, dy, kernel_size, stride):
  """A 'valid' convolution's filter gradient as one matmul per kernel tap: the tap's window of
  the input (at stride 2, of its space_to_depth phases), transposed, times the output
  gradient. A function of its own, not inlined: traced and instantiated once per shape, not
  once per layer and pass (its ~30 ops inlined 110 times made the first step 3 s slower)."""
  _, height, width, channels_out = dy.shape
  channels_in = x.shape[3]
  if stride == 2:
    phases = tf.nn.space_to_depth(
        tf.pad(x, [[0, 0], [0, x.shape[1] % 2], [0, x.shape[2] % 2], [0, 0]]), 2)
    window = lambda i, j: tf.slice(
        phases, [0, i // 2, j // 2, (i % 2 * 2 + j % 2) * channels_in],
        [-1, height, width, channels_in])
  else:
    window = lambda i, j: tf.slice(x, [0, i, j, 0], [-1, height, width, -1])
  dy_matrix = tf.reshape(dy, [-1, channels_out])
  rows, cols = kernel_size
  taps = [tf.matmul(tf.reshape(window(i, j), [-1, channels_in]), dy_matrix, transpose_a=True)
          for i in range(rows) for j in range(cols)]
  return tf.reshape(tf.stack(taps), [rows, cols, channels_in, channels_out])
