"""bf16 3x3 stride-1 convolutions by Winograd's F(2, 3) along rows: per two output rows, four
1x3 convolutions over transformed input rows instead of two 3x3 ones (2/3 of the
multiplications), each still oneDNN's kernel.

oneDNN's bf16 convolutions already run at this CPU's peak (~950 GFLOP/s on two cores), so
only fewer multiplications help; 2-D F(4x4, 3x3) or F(2x2, 3x3) in bf16 do not pay (their
batched matmuls run at half the convolution's rate). Inference only: its output and input
gradient by rows made the bf16 training step slower.
"""

import tensorflow as tf

from cyclegan.kernels import per_graph
from cyclegan.kernels import switch

# F(2, 3)'s kernel transform with the points 0, 1, -1 and infinity: rows g0, g1, g2 of a 3x3
# kernel -> g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2.
KERNEL_TRANSFORM = ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1))


def applies(layer, image_shape, training):
  """Outside training: bf16, 3x3 stride 1, 128+ channels in and out, on a CPU, unless a side
  of the input (height, width, channels) is known to be under 66 (there oneDNN is as fast)."""
  return not training and switch.wide_3x3(layer, image_shape, "bfloat16", min_side=66)


def kernels(layer, kernel, image):
  """conv_by_row_winograd's four 1x3 kernels for `layer`'s 3x3 `kernel`, as one matmul
  (summed in float32, rounded once); made once per traced graph, layer and device, after
  `image` (see winograd.kernels)."""
  def make():
    transform = tf.constant(KERNEL_TRANSFORM, kernel.dtype)
    rows = tf.matmul(transform, tf.reshape(kernel, [3, -1]))
    return tf.unstack(tf.reshape(rows, [4, 1, *kernel.shape[1:]]))
  return per_graph.once_per_graph(("row_winograd", layer, image.device), make,
                                  "row_winograd_kernels/", after=[image])


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def conv_by_row_winograd(x, kernels):
  """A 'valid' 3x3 stride-1 convolution by F(2, 3) along rows, by `kernels`. Any batch and
  sides; an odd height computes one output row more and crops it. Not inlined, as
  winograd.conv_by_winograd: its ~130 ops inlined in each of the full generator's 18
  convolutions doubled the graph, its tracing and the first call's setup.

  The transformed inputs and the four products are rounded to bf16 each: against float64 on
  the same bf16 inputs and kernel, rms 0.43% of the output's, the direct convolution's 0.17%.
  """
  batch, height, width, channels = tf.unstack(tf.shape(x))
  out_rows = height - 2
  tiles = (out_rows + 1) // 2
  # Tile j reads padded rows 2j .. 2j + 3: gathered once as two stacks, the even rows (2j)
  # then the odd ones (2j + 1), j = 0 .. tiles, each row for every image; the row past the end
  # (odd heights) is clamped, as it reaches only the cropped output row. Rows of consecutive
  # tiles are then slices along the first axis, which share the gathered buffer.
  rows = tf.minimum(2 * tf.range(tiles + 1) + tf.constant([[0], [1]]), height - 1)
  index = tf.reshape(rows[:, :, None] + tf.range(batch) * height, [-1])
  stacks = tf.reshape(tf.gather(tf.reshape(x, [batch * height, -1]), index),
                      [2 * (tiles + 1), -1])
  even, even_next = stacks[:tiles], stacks[1:tiles + 1]
  odd, odd_next = stacks[tiles + 1:-1], stacks[tiles + 2:]
  transformed = (even - even_next, odd + even_next, even_next - odd, odd - odd_next)
  products = [tf.nn.conv2d(tf.reshape(t, [1, tiles * batch, width, channels]), kernel, 1,
                           "VALID") for t, kernel in zip(transformed, kernels)]
  upper = tf.reshape(tf.add_n(products[:3]), [tiles, -1])  # output rows 2j
  lower = tf.reshape(products[1] - products[2] - products[3], [tiles, -1])  # rows 2j + 1
  channels_out = kernels[0].shape[-1]
  y = tf.reshape(tf.stack([upper, lower], axis=1), [2 * tiles, batch, width - 2, channels_out])
  y = tf.slice(tf.transpose(y, [1, 0, 2, 3]), [0, 0, 0, 0], [-1, out_rows, -1, -1])
  y.set_shape([x.shape[0], *(None if s is None else s - 2 for s in x.shape[1:3]), channels_out])
  return y
