"""The generator's 7x7 head (3 filters) computed on 2x2 blocks.

oneDNN's CPU kernels vectorise over output channels, 16 at a time; with 3 the head runs at
~1/6 of the speed of the convolutions around it. On space_to_depth's 2x2 blocks it has 12.
"""

import tensorflow as tf

from cyclegan.kernels import switch


def applies(layer):
  """The generator's head: a 7x7 stride-1 convolution to 3 or fewer filters, on a CPU."""
  return (switch.on_cpu(layer) and tuple(layer.kernel_size) == (7, 7) and
          tuple(layer.strides) == (1, 1) and layer.filters <= 3)


def conv_on_2x2_blocks(x, kernel):
  """A 'valid' stride-1 convolution with an odd-sized kernel, computed on space_to_depth's 2x2
  blocks: the same sums, with 4x the output channels for the kernels to vectorise over.

  Sides traced as unknown must be even, as the generator's are (its inputs are multiples of
  4); known odd sides are padded and cropped back.
  """
  k = kernel.shape[0]
  h, w = x.shape[1:3]
  pad = [(h or 0) % 2, (w or 0) % 2]
  if any(pad):
    x = tf.pad(x, [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]])
  y = tf.nn.depth_to_space(tf.nn.conv2d(tf.nn.space_to_depth(x, 2), block_kernel(kernel), 1,
                                        "VALID"), 2)
  if any(pad):
    y = tf.slice(y, [0, 0, 0, 0], [-1, h - k + 1, w - k + 1, -1])
  return y


def block_kernel(kernel):
  """kernel [k, k, in, out] (k odd) -> the same convolution's kernel on 2x2 blocks,
  [(k+1)/2, (k+1)/2, 4 in, 4 out], in space_to_depth's channel order (row, column, channel)."""
  k, _, channels_in, channels_out = kernel.shape
  blocks = (k + 1) // 2
  # Output (row, col) of a block reads input 2*block + in-block offset - (row, col) of `kernel`.
  per_output = [tf.reshape(tf.pad(kernel, [[row, 1 - row], [col, 1 - col], [0, 0], [0, 0]]),
                           [blocks, 2, blocks, 2, channels_in, channels_out])
                for row in (0, 1) for col in (0, 1)]
  block = tf.transpose(tf.stack(per_output, axis=5), [0, 2, 1, 3, 4, 5, 6])
  return tf.reshape(block, [blocks, blocks, 4 * channels_in, 4 * channels_out])
