"""float32 3x3 stride-1 convolutions by Winograd's F(4x4, 3x3): 36 multiplications per 4x4
outputs and channel pair instead of 144.

oneDNN's float32 kernels already run at this CPU's peak; only fewer multiplications help.
Taken for the residual convolutions (128+ channels in and out, from ngf 32 up) outside
training, and in training for their output and input gradient (filter_gradient's matmul
route). Not in bf16: there it was slower (its batched matmuls run at half the convolution's
rate) and 10x the error.
"""

import functools

import numpy as np
import tensorflow as tf

from cyclegan.kernels import per_graph
from cyclegan.kernels import switch


def applies(layer, image_shape):
  """float32, 3x3 stride 1, 128+ channels in and out, on a CPU, unless a side of the input
  (height, width, channels) is known to be under 18 (there oneDNN is as fast)."""
  return switch.wide_3x3(layer, image_shape, "float32", min_side=18)


# F(4x4, 3x3)'s interpolation points (and infinity). Against float64, the error on a
# 256-channel output is 3.8e-6 of its largest value with these, 9.3e-6 with the usual 0, +-1, +-2.
POINTS = (0.0, -1.0, 1.0, 0.5, -2.0)


@functools.lru_cache(maxsize=None)
def transforms():
  """F(4x4, 3x3)'s transforms of flattened tiles: input [36, 36], kernel [36, 9], output
  [16, 36]. The Kronecker squares of 1-D F(4, 3)'s, which Cook-Toom's construction gives from
  POINTS: output and kernel transforms directly, the input transform as the one that makes
  output @ ((kernel @ g) * (input @ d)) the correlation of g and d."""
  points = np.array(POINTS)
  outputs, taps, inputs = 4, 3, 6
  output = np.zeros([outputs, inputs])
  output[:, :-1] = points ** np.arange(outputs)[:, None]
  output[-1, -1] = 1
  kernel = np.zeros([inputs, taps])
  kernel[:-1] = points[:, None] ** np.arange(taps) / np.array(
      [np.prod([p - q for q in points if q != p]) for p in points])[:, None]
  kernel[-1, -1] = 1
  products = np.einsum("ik,kj->ijk", output, kernel).reshape(outputs * taps, inputs)
  correlation = np.zeros([outputs, taps, inputs])
  for i, j in np.ndindex(outputs, taps):
    correlation[i, j, i + j] = 1
  input_ = np.linalg.lstsq(products, correlation.reshape(outputs * taps, inputs), rcond=None)[0]
  square = lambda a: np.kron(a, a).astype(np.float32)
  return square(input_), square(kernel), square(output)


def kernels(layer, kernel, image, flipped=False):
  """conv_by_winograd's kernels ([36, in, out]) for `layer`'s `kernel` (flipped: turned half
  round, in and out swapped, for its input gradient), made once per traced graph, layer and
  device (each replica its own), from the kernel as the graph first reads it: a graph must
  not update the layer between two of its passes (a training step updates after them all).
  They wait for the `image` of their first use (its device is the replica's): with nothing
  to wait for, the executor makes every transform at the start of the step and holds them all.
  A training step runs each generator three times: transformed per pass, the residual kernels
  were 216 transforms a step instead of 72.
  """
  def make():
    turned = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]) if flipped else kernel
    channels_in, channels_out = turned.shape[2:]
    _, kernel_transform, _ = transforms()
    return tf.reshape(tf.matmul(kernel_transform, tf.reshape(turned, [9, -1])),
                      [36, channels_in, channels_out])
  return per_graph.once_per_graph(("winograd", layer, image.device, flipped), make,
                                  "winograd_kernels/", after=[image])


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def conv_by_winograd(x, kernels):
  """A 'valid' 3x3 stride-1 float32 convolution by F(4x4, 3x3), in one batched matmul of
  transformed 6x6 input tiles (at stride 4) by transformed kernels (`kernels`). Any sides,
  known or not.

  Tiles and outputs are gathered (one copy each, no padding or transposes), and the function
  is not inlined: each call costs tracing time in proportion to its ops (inlined, the full
  model's training step traced in 16.1 instead of 2.7 s).
  """
  input_transform, _, output_transform = transforms()
  channels_in, channels_out = kernels.shape[1:]
  batch, height, width, _ = tf.unstack(tf.shape(x))
  rows, cols = (height + 1) // 4, (width + 1) // 4  # tiles over the output's height - 2, width - 2
  # Tap i of tile r reads row 4r + i, clamped to the last row: the rows past it only reach
  # outputs past the edge, which are not gathered. Likewise columns.
  taps = np.arange(6)[:, None]
  tap_rows = tf.minimum(4 * tf.range(rows) + taps, height - 1)
  tap_cols = tf.minimum(4 * tf.range(cols) + taps, width - 1)
  pixels = (tf.reshape(tf.range(batch) * height, [1, 1, -1, 1, 1]) +
            tf.reshape(tap_rows, [6, 1, 1, -1, 1])) * width + tf.reshape(tap_cols, [1, 6, 1, 1, -1])
  tiles = tf.gather(tf.reshape(x, [-1, channels_in]), tf.reshape(pixels, [36, -1]))
  tiles = tf.matmul(input_transform, tf.reshape(tiles, [36, -1]))
  products = tf.matmul(tf.reshape(tiles, [36, -1, channels_in]), kernels)
  outputs = tf.reshape(tf.matmul(output_transform, tf.reshape(products, [36, -1])),
                       [-1, channels_out])  # row: output (i, j) of its tile, then the tile
  out_rows, out_cols = tf.range(height - 2), tf.range(width - 2)
  where = (tf.reshape(out_rows % 4 * 4, [-1, 1]) + out_cols % 4) * (batch * rows * cols) + (
      tf.reshape(out_rows // 4 * cols, [-1, 1]) + out_cols // 4)
  y = tf.gather(outputs, tf.reshape(tf.range(batch) * (rows * cols), [-1, 1, 1]) + where)
  y.set_shape([x.shape[0], *(None if s is None else s - 2 for s in x.shape[1:3]), channels_out])
  return y
