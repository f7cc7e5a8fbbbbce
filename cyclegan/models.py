"""ResNet generator and PatchGAN discriminator, layer for layer as the PyTorch reference.

Every padding, norm and transposed-conv choice here matches PyTorch's numerics (checked in
tests/models_test.py and against tools/torch_reference.py); the Keras defaults that differ
(padding="same", eps 1e-3, LeakyReLU 0.3) are avoided on purpose. All models are fully convolutional: inputs are (None, None, None, 3).
"""

import contextlib
import contextvars
import functools
import weakref

import keras
import numpy as np
import tensorflow as tf

from cyclegan import any_size


def weight_init():
  """N(0, 0.02), a new initializer per layer.

  A Keras initializer draws the same values on every call, from a seed it takes from Python's
  `random` when it is made: one shared instance gives every layer of a shape (both generators,
  all residual blocks) the same weights, from a seed no config controls.
  """
  return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


@keras.saving.register_keras_serializable(package="cyclegan")
class ReflectionPad2D(keras.layers.Layer):
  """Reflect padding (PyTorch ReflectionPad2d); Keras has only zero padding."""

  def __init__(self, padding, **kwargs):
    super().__init__(**kwargs)
    self.padding = padding

  def call(self, x, training=None):
    p = self.padding
    if training:
      # One op, and one kernel for its gradient: the training step's graph stays small.
      return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
    # Inference: one gather of the pixels in reflected order (any_size's indices); the same
    # numbers, on CPU in bf16 ~2.5x faster than MirrorPad's kernel (translating 512 px: ~10%),
    # and one copy instead of two for rows, then columns (512 px: bf16 0.510 -> 0.503 s,
    # fp32 0.663 -> 0.641 s on a 2-core AVX512_BF16 EPYC).
    shape = tf.shape(x)
    rows = any_size.reflect_indices(shape[1], p, p)
    cols = any_size.reflect_indices(shape[2], p, p)
    pixels = tf.reshape(rows[:, None] * shape[2] + cols, [-1])
    y = tf.gather(tf.reshape(x, [shape[0], -1, shape[3]]), pixels, axis=1)
    return tf.reshape(y, [shape[0], shape[1] + 2 * p, shape[2] + 2 * p, shape[3]])

  def compute_output_shape(self, input_shape):
    grow = lambda d: None if d is None else d + 2 * self.padding
    return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

  def get_config(self):
    return {**super().get_config(), "padding": self.padding}


# Per graph being traced: key -> what once_per_graph made for it.
_PER_GRAPH = weakref.WeakKeyDictionary()


def once_per_graph(key, make, name, after=None):
  """make() once per traced graph and key (eagerly, on every call), in name scope `name`,
  after the tensors `after` (None: after nothing, wherever the first call stands)."""
  if tf.executing_eagerly():
    return make()
  per_graph = _PER_GRAPH.setdefault(tf.compat.v1.get_default_graph(), {})
  if key not in per_graph:
    with tf.control_dependencies(after), tf.name_scope(name):
      per_graph[key] = make()
  return per_graph[key]


def _norm_constants(channels, device):
  """The constant inputs of a batch-statistics FusedBatchNorm, made once per traced graph,
  channel count and device (each replica its own): made per call they were ~600 of the
  training step's ~6,400 graph ops."""
  make = lambda: (tf.ones([channels]), tf.zeros([channels]), tf.constant([], tf.float32))
  if not isinstance(channels, int):
    return make()
  return once_per_graph(("instance_norm", channels, device), make, "instance_norm_constants/")


@keras.saving.register_keras_serializable(package="cyclegan")
class InstanceNormalization(keras.layers.Layer):
  """InstanceNorm2d(affine=False): per sample and channel, eps 1e-5, biased variance.

  One fused batch-norm kernel over the batch's channels side by side ([1, H, W, N*C]), the
  same numbers, statistics in float32 whatever the compute dtype, and its gradient one kernel
  too. Against moments over H, W (2-core EPYC, bf16): a full-size training step at 256 px
  3.72 instead of 3.94 s, peak 2.42 instead of 3.22 GB; translating 512 px 0.70 instead of
  0.89 s. TFLite and ONNX convert it (tests/portable_test.py).
  """

  def __init__(self, epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def call(self, x):
    if x.shape[0] == 1 and x.shape[-1] is not None:
      # One image of known channels (the reference's batch, traced for training): its
      # channels already lie side by side, and the graph stays small; the general form's
      # shape arithmetic was half of the training step's 11,500 ops.
      return self._fused(x, x.shape[-1])
    shape = tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    y = self._fused(tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, n * c]), n * c)
    return tf.transpose(tf.reshape(y, [h, w, n, c]), [2, 0, 1, 3])

  def _fused(self, y, channels):
    """Batch norm of [1, H, W, channels] with batch statistics: each channel on its own."""
    scale, offset, empty = _norm_constants(channels, y.device)
    # cuDNN rejects an epsilon below 1e-5 in float64 (float32 1e-5 is just below): TF's own
    # wrapper raises it to 1.001e-5 likewise.
    y, *_ = tf.raw_ops.FusedBatchNormV3(
        x=y, scale=scale, offset=offset, mean=empty, variance=empty,
        epsilon=max(self.epsilon, 1.001e-5), is_training=True)
    return y

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


# --precision -> the Keras dtype policy the networks are built with (weights stay float32).
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


class _BiasBeforeNorm:
  """A convolution's `instance_normalized` flag (its output goes straight into an instance
  norm) and its bias add, left out where bias_cancelled."""

  def __init__(self, *args, instance_normalized=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.instance_normalized = instance_normalized

  def get_config(self):
    return {**super().get_config(), "instance_normalized": self.instance_normalized}

  def _add_bias(self, y, training):
    return y if bias_cancelled(self, training) else tf.nn.bias_add(y, self.bias)


@keras.saving.register_keras_serializable(package="cyclegan")
class Conv2D(_BiasBeforeNorm, keras.layers.Conv2D):
  """Keras's Conv2D (same weights and numbers) adding its bias with one BiasAdd.

  Keras reshapes the bias, squeezes it back and adds it: with their gradients, about 950 of
  the training step's ops, each traced in Python and instantiated before the first step.
  In training see gemm_filter_gradient and matmul_filter_gradient, outside it winograd and
  row_winograd.
  instance_normalized: see bias_cancelled.
  """

  def call(self, x, training=None):
    if on_2x2_blocks(self):
      y = conv_on_2x2_blocks(x, self.kernel)
    elif row_winograd(self, x.shape[1:], training):
      y = conv_by_row_winograd(
          x, row_winograd_kernels(self, tf.convert_to_tensor(self.kernel), x))
    elif not training and winograd(self, x.shape[1:]):
      y = conv_by_winograd(x, winograd_kernels(self, tf.convert_to_tensor(self.kernel), x))
    elif training and gemm_filter_gradient(self, x.shape[1:]):
      y = tf.nn.conv2d(x, self.kernel, self.strides, padding=NO_PADDING)
    elif training and matmul_filter_gradient(self, x.shape[1:]):
      y = conv_with_matmul_filter_gradient(
          x, self.kernel, self.strides[0],
          winograd(self, x.shape[1:]) and functools.partial(winograd_kernels, self))
    else:
      y = self.convolution_op(x, self.kernel)
    return self._add_bias(y, training)


@keras.saving.register_keras_serializable(package="cyclegan")
class Conv2DTranspose(_BiasBeforeNorm, keras.layers.Conv2DTranspose):
  """Keras's 'valid' Conv2DTranspose (same weights and numbers); in training see
  gemm_filter_gradient and matmul_filter_gradient; instance_normalized: see bias_cancelled."""

  def call(self, x, training=None):
    if self.output_padding or self.padding != "valid" or tuple(self.dilation_rate) != (1, 1):
      return super().call(x)
    (sh, sw), (kh, kw) = self.strides, self.kernel_size
    shape = tf.shape(x)
    height, width = (shape[i] if x.shape[i] is None else x.shape[i] for i in (1, 2))
    out = ((height - 1) * sh + kh, (width - 1) * sw + kw, self.filters)  # ints where known
    output_shape = (shape[0], *out)
    known = None not in x.shape[1:3]
    if training and known and gemm_filter_gradient(self, out):
      y = tf.nn.conv2d_transpose(x, self.kernel, output_shape, self.strides, padding=NO_PADDING)
    elif training and known and matmul_filter_gradient(self, out):
      y = conv_transpose_with_matmul_filter_gradient(x, self.kernel, output_shape, sh)
    else:
      y = tf.nn.conv2d_transpose(x, self.kernel, output_shape, self.strides, padding="VALID")
    return self._add_bias(y, training)


def bias_cancelled(layer, training):
  """Whether to leave out `layer`'s bias: outside training, where its output goes straight
  into an instance norm (instance_normalized), whose subtraction of each channel's mean
  removes any per-channel constant. The same numbers up to rounding; the bias stays in
  training, where it has its (zero) gradient as in the reference. Translating 512 px on a
  2-core AVX512_BF16 EPYC (the transposed convolutions' bias adds in bf16, the Winograd
  convolutions' in fp32): bf16 0.513 -> 0.507 s, fp32 0.669 -> 0.657 s."""
  return layer.instance_normalized and not training


# An explicit all-zero padding is "valid" padding, but TF leaves such convolutions' filter
# gradient to its own im2col + GEMM kernel instead of rewriting it to oneDNN's.
NO_PADDING = [[0, 0]] * 4


def gemm_filter_gradient(layer, image_shape):
  """Whether to train `layer` with TF's GEMM filter gradient (see NO_PADDING), given the
  (height, width, channels) of the gradient's image operand: the input of a convolution, the
  output of a transposed one.

  oneDNN's float32 filter-gradient kernel for NHWC falls off a cliff on the generator's 3x3
  stride-2 layers once their image operand holds ~2M values of 64+ channels (the full model
  at 256 px: 73 vs 21 ms for down0, 2.4-3.6x on all four, one thread; at 128 px, and with 32
  or fewer channels, the two are even). Only float32: TF's GEMM kernel has no bf16 path (40x
  slower). Only without GPUs: the cliff is oneDNN's. Measured on a 2-core AVX512_BF16 EPYC;
  README "Speed".
  """
  h, w, channels = image_shape
  return (_valid_on_cpu(layer) and layer.compute_dtype == "float32" and
          tuple(layer.kernel_size) == (3, 3) and tuple(layer.strides) == (2, 2) and
          None not in image_shape and channels >= 64 and h * w * channels >= 2**21)


def _valid_on_cpu(layer):
  """What every route of Conv2D and Conv2DTranspose needs: the networks' kind of convolution
  ('valid' and undilated; they write their padding out) on a machine without GPUs (each
  route works around one of oneDNN's CPU kernels)."""
  return (layer.padding == "valid" and tuple(layer.dilation_rate) == (1, 1) and
          not tf.config.list_physical_devices("GPU"))


def on_2x2_blocks(layer):
  """Whether `layer` convolves by conv_on_2x2_blocks: the generator's 7x7 head (3 filters) on
  a machine without GPUs.

  oneDNN's CPU kernels vectorise over output channels, 16 at a time; with 3 the head ran at
  ~1/6 of the speed of the convolutions around it. On 2x2 blocks it has 12 (512 px, 64 -> 3:
  bf16 31.7 -> 15.6 ms, fp32 61 -> 28 ms; forward and backward at 256 px bf16 23.7 -> 13.5
  ms). Measured on a 2-core AVX512_BF16 EPYC; README "Speed".
  """
  return (_valid_on_cpu(layer) and tuple(layer.kernel_size) == (7, 7) and
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
  y = tf.nn.depth_to_space(tf.nn.conv2d(tf.nn.space_to_depth(x, 2), _block_kernel(kernel), 1,
                                        "VALID"), 2)
  if any(pad):
    y = tf.slice(y, [0, 0, 0, 0], [-1, h - k + 1, w - k + 1, -1])
  return y


def _block_kernel(kernel):
  """kernel [k, k, in, out] (k odd) -> the same convolution's kernel on 2x2 blocks,
  [(k+1)/2, (k+1)/2, 4 in, 4 out], in space_to_depth's channel order (row, column, channel)."""
  k, _, channels_in, channels_out = kernel.shape
  blocks = (k + 1) // 2
  # Output (row, col) of a block reads input 2*block + in-block offset - (row, col) of `kernel`.
  per_output = [tf.reshape(tf.pad(kernel, [[row, 1 - row], [col, 1 - col], [0, 0], [0, 0]]),
                           [blocks, 2, blocks, 2, channels_in, channels_out])
                for row in (0, 1) for col in (0, 1)]
  block_kernel = tf.transpose(tf.stack(per_output, axis=5), [0, 2, 1, 3, 4, 5, 6])
  return tf.reshape(block_kernel, [blocks, blocks, 4 * channels_in, 4 * channels_out])


def matmul_filter_gradient(layer, image_shape):
  """Whether to train `layer` by conv_with_matmul_filter_gradient (Conv2D) or
  conv_transpose_with_matmul_filter_gradient, given the (height, width, channels) of the
  gradient's image operand (as gemm_filter_gradient), on a CPU: stride 1 with 128+ channels
  in and out (the residual convolutions, the discriminator's stride-1 layer), and in bf16
  stride 2 with 64+ in the image operand (the generator's down and up convolutions, the
  discriminator's but its first).

  oneDNN's bf16 filter gradient for them is an older kernel than its forward one (jit_bf16,
  not brgemm). One thread, oneDNN against matmuls: 64x64x256 3x3 16.9 vs 12.5-13.3 ms (11.5
  forward); 32x32x256 4.7 vs 3.4-3.6 ms; 32x32x128 1.4 vs 1.1-1.3 ms; stride 2 at 256 px:
  down0 14.6 vs 10.6, down1 12.4 vs 7.7, up0 12.2 vs 8.3, up1 15.5 vs 11.2 ms. The matmuls
  lose at stride 1 with 64 channels (1.2 vs 1.4 ms) and at stride 2 with 3 (1.3 vs 2.5 ms).
  fp32, stride 1: 32x32x256 8.2 vs 6.6 ms, 64x64x256 24-33 vs 23-27 ms; the step at 128 px
  1.326 -> 1.297 s, at 256 px the same as oneDNN's kernel on halves of the output channels,
  which it replaced (5.07 vs 5.10 s). fp32 at stride 2 keeps gemm_filter_gradient (by
  matmuls 87 vs 21 ms for down0 at 256 px). Measured on a 2-core AVX512_BF16 EPYC; README
  "Speed".
  """
  if (not _valid_on_cpu(layer) or layer.compute_dtype not in ("bfloat16", "float32") or
      None in image_shape):
    return False
  channels = image_shape[-1]
  if tuple(layer.strides) == (1, 1):
    return channels >= 128 and layer.filters >= 128
  return layer.compute_dtype == "bfloat16" and tuple(layer.strides) == (2, 2) and channels >= 64


def conv_with_matmul_filter_gradient(x, kernel, stride, transformed=None):
  """A 'valid' convolution whose filter gradient is _filter_gradient_by_taps; with
  `transformed` (3x3 stride 1; (kernel, image, flipped) -> Winograd kernels, as
  winograd_kernels): its output and input gradient by conv_by_winograd, the input gradient as
  the 'valid' convolution of the zero-padded output gradient with the kernel turned half
  round."""

  @tf.custom_gradient
  def convolve(x, kernel):
    def gradient(dy):
      if transformed:
        dx = conv_by_winograd(tf.pad(dy, [[0, 0], [2, 2], [2, 2], [0, 0]]),
                              transformed(kernel, dy, flipped=True))
      else:
        dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                            out_backprop=dy, strides=[1, stride, stride, 1],
                                            padding="VALID")
      return dx, _filter_gradient_by_taps(x, dy, tuple(kernel.shape[:2]), stride)
    if transformed:
      return conv_by_winograd(x, transformed(kernel, x)), gradient
    return tf.nn.conv2d(x, kernel, stride, "VALID"), gradient

  return convolve(x, kernel)


def conv_transpose_with_matmul_filter_gradient(x, kernel, output_shape, stride):
  """A 'valid' transposed convolution whose filter gradient is _filter_gradient_by_taps (the
  convolution's, with input and output gradient in each other's place)."""

  @tf.custom_gradient
  def convolve(x, kernel):
    def gradient(dy):
      dx = tf.nn.conv2d(dy, kernel, stride, "VALID")
      return dx, _filter_gradient_by_taps(dy, x, tuple(kernel.shape[:2]), stride)
    return tf.nn.conv2d_transpose(x, kernel, output_shape, stride, padding="VALID"), gradient

  return convolve(x, kernel)


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def _filter_gradient_by_taps(x, dy, kernel_size, stride):
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


_WITHOUT_WINOGRAD = contextvars.ContextVar("without_winograd", default=False)


@contextlib.contextmanager
def without_winograd():
  """Traces convolutions as convolutions within the block: for converters (TFLite, ONNX),
  which would fold Winograd's transformed kernels, 4x the weights, into their files."""
  token = _WITHOUT_WINOGRAD.set(True)
  try:
    yield
  finally:
    _WITHOUT_WINOGRAD.reset(token)


def winograd(layer, image_shape):
  """Whether to convolve by conv_by_winograd, given the layer's input (height, width,
  channels): float32 3x3 stride 1 with 128+ channels in and out (the residual convolutions
  from ngf 32 up) on a CPU, unless a side is known to be under 18. In training, within
  conv_with_matmul_filter_gradient (output and input gradient).

  oneDNN's float32 kernels already run at this CPU's peak; only fewer multiplications help.
  Two threads, 256 channels, output side 256: 215 -> 88 ms; 128: 43 -> 23 ms (another
  hour); 64: 14.1 -> 7.1; 32: 3.9 -> 2.6; 16: 1.3 -> 1.2. 128 channels at 128: 13.0 -> 9.7
  ms; 64 channels lost (3.5 vs 4.0), and bf16 (22.4 vs 26.5 ms, 10x the error). The full
  model translating 512 px: 1.13 -> 0.68 s; its training step at 256 px 5.29 -> 4.03 s, at
  128 px 1.39 -> 1.17 s. Measured on a 2-core AVX512_BF16 EPYC; README "Speed".
  """
  return _wide_3x3(layer, image_shape, "float32", min_side=18)


def _wide_3x3(layer, image_shape, dtype, min_side):
  """What both Winograd routes take, given the layer's input (height, width, channels): a
  3x3 stride-1 convolution in `dtype` with 128+ channels in and out on a CPU, outside
  without_winograd, unless a side is known to be under `min_side`."""
  height, width, channels = image_shape
  return (_valid_on_cpu(layer) and not _WITHOUT_WINOGRAD.get() and
          layer.compute_dtype == dtype and tuple(layer.kernel_size) == (3, 3) and
          tuple(layer.strides) == (1, 1) and channels is not None and channels >= 128 and
          layer.filters >= 128 and
          all(side is None or side >= min_side for side in (height, width)))


# F(4x4, 3x3)'s interpolation points (and infinity). Against float64, the error on a
# 256-channel output is 3.8e-6 of its largest value with these, 9.3e-6 with the usual 0, +-1, +-2.
WINOGRAD_POINTS = (0.0, -1.0, 1.0, 0.5, -2.0)


@functools.lru_cache(maxsize=None)
def winograd_transforms():
  """F(4x4, 3x3)'s transforms of flattened tiles: input [36, 36], kernel [36, 9], output
  [16, 36]. The Kronecker squares of 1-D F(4, 3)'s, which Cook-Toom's construction gives from
  WINOGRAD_POINTS: output and kernel transforms directly, the input transform as the one
  that makes output @ ((kernel @ g) * (input @ d)) the correlation of g and d."""
  points = np.array(WINOGRAD_POINTS)
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


def winograd_kernels(layer, kernel, image, flipped=False):
  """conv_by_winograd's kernels ([36, in, out]) for `layer`'s `kernel` (flipped: turned half
  round, in and out swapped, for its input gradient), made once per traced graph, layer and
  device (each replica its own), from the kernel as the graph first reads it: a graph must
  not update the layer between two of its passes (a training step updates after them all).
  They wait for the `image` of their first use (its device is the replica's): with nothing
  to wait for, the executor makes every transform at the start of the step and holds them all.

  A training step runs each generator three times, forward and backward: transformed per
  pass, the residual kernels were 216 transforms of ~0.8 ms a step (72 now). fp32 step,
  2-core AVX512_BF16 EPYC, two process pairs: 128 px 1.11-1.20 -> 1.03-1.09 s, 256 px
  3.83-4.05 -> 3.70-3.86 s, for peak RSS 1.79 -> 2.0 GB and 2.96-3.0 -> 3.31-3.36 GB (the
  forward transforms held across the passes; PyTorch's step at 256 px: 3.56 GB).
  """
  def make():
    turned = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]) if flipped else kernel
    channels_in, channels_out = turned.shape[2:]
    _, kernel_transform, _ = winograd_transforms()
    return tf.reshape(tf.matmul(kernel_transform, tf.reshape(turned, [9, -1])),
                      [36, channels_in, channels_out])
  return once_per_graph(("winograd", layer, image.device, flipped), make, "winograd_kernels/",
                        after=[image])


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def conv_by_winograd(x, kernels):
  """A 'valid' 3x3 stride-1 float32 convolution by Winograd's F(4x4, 3x3): per 4x4 outputs
  and channel pair 36 multiplications instead of 144, in one batched matmul of transformed
  6x6 input tiles (at stride 4) by transformed kernels (winograd_kernels). Any sides, known or
  not.

  Tiles and outputs are gathered (one copy each, no padding or transposes), and the function
  is not inlined, as _filter_gradient_by_taps: each call costs tracing time in proportion to
  its ops (inlined, the full model's training step traced in 16.1 instead of 2.7 s).
  """
  input_transform, _, output_transform = winograd_transforms()
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


def row_winograd(layer, image_shape, training):
  """Whether to convolve by conv_by_row_winograd, given the layer's input (height, width,
  channels): outside training, bf16 3x3 stride 1 with 128+ channels in and out (the residual
  convolutions from ngf 32 up) on a CPU, unless a side is known to be under 66.

  oneDNN's bf16 convolutions already run at this CPU's peak (~950 GFLOP/s on two cores), so
  only fewer multiplications help, and F(4x4, 3x3) or F(2x2, 3x3) in bf16 do not pay (their
  batched matmuls run at half the convolution's rate; "Speed" in the README). Two threads,
  input side 130 (512 px images), 256 channels: 22.2 -> 18.4 ms; side 258: 86.5 -> 74 ms;
  66: 6.45 -> 5.3 ms; 34: even. 128 channels at 130: 6.7 -> 6.1 ms. Not in training: its
  output and input gradient by rows made the bf16 step at 256 px slower (2.70 -> 3.11 s).
  Measured on a 2-core AVX512_BF16 EPYC.
  """
  return not training and _wide_3x3(layer, image_shape, "bfloat16", min_side=66)


def row_winograd_kernels(layer, kernel, image):
  """conv_by_row_winograd's four 1x3 kernels for `layer`'s 3x3 `kernel` (rows g0, g1, g2):
  g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 (F(2, 3)'s kernel transform with the points
  0, 1, -1 and infinity), as one matmul (summed in float32, rounded once); made once per
  traced graph, layer and device, after `image` (see winograd_kernels)."""
  def make():
    transform = tf.constant([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], kernel.dtype)
    rows = tf.matmul(transform, tf.reshape(kernel, [3, -1]))
    return tf.unstack(tf.reshape(rows, [4, 1, *kernel.shape[1:]]))
  return once_per_graph(("row_winograd", layer, image.device), make, "row_winograd_kernels/",
                        after=[image])


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def conv_by_row_winograd(x, kernels):
  """A 'valid' 3x3 stride-1 convolution by Winograd's F(2, 3) along rows: per two output rows
  four 1x3 convolutions (each over one row of transformed inputs, by one of
  row_winograd_kernels) instead of two 3x3 ones, 2/3 of the multiplications, each still
  oneDNN's kernel. Any batch and sides; an odd height computes one output row more and crops it.
  A function of its own, not inlined, as conv_by_winograd: its ~130 ops inlined in each of the
  full generator's 18 convolutions doubled the graph (1,978 -> 4,264 ops at 512 px), its
  tracing (0.4 -> 0.85 s) and the first call's setup (+0.25 s).

  The transformed inputs and the four products are rounded to bf16 each: against float64 on
  the same bf16 inputs and kernel, rms 0.43% of the output's, the direct convolution's 0.17%
  (130x130x256). The full-size generator on 8 real photos: mean 1.48 levels (of 255) from
  float32, p99 6, max 25, against 1.29, 5, 19 with direct convolutions.
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


@keras.saving.register_keras_serializable(package="cyclegan")
class Cropping2D(keras.layers.Cropping2D):
  """Keras's Cropping2D, by tf.slice where it crops from the top and left only.

  Keras's strided slice has StridedSliceGrad for gradient, ~13-25 ms per crop in bf16 on CPU
  (12 crops in a training step); tf.slice's is a Pad, ~1 ms.
  """

  def call(self, x):
    (top, bottom), (left, right) = self.cropping
    if bottom or right:
      return super().call(x)
    return tf.slice(x, [0, top, left, 0], [-1, -1, -1, -1])


def conv(filters, kernel_size, strides=1, name=None, dtype="float32", instance_normalized=False):
  return Conv2D(
      filters, kernel_size, strides=strides, padding="valid", kernel_initializer=weight_init(),
      bias_initializer="zeros", name=name, dtype=dtype, instance_normalized=instance_normalized)


def _residual_block(x, filters, name, dtype):
  y = ReflectionPad2D(1, name=f"{name}_pad1", dtype=dtype)(x)
  y = conv(filters, 3, name=f"{name}_conv1", dtype=dtype, instance_normalized=True)(y)
  y = InstanceNormalization(name=f"{name}_norm1", dtype=dtype)(y)
  y = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(y)
  y = ReflectionPad2D(1, name=f"{name}_pad2", dtype=dtype)(y)
  y = conv(filters, 3, name=f"{name}_conv2", dtype=dtype, instance_normalized=True)(y)
  y = InstanceNormalization(name=f"{name}_norm2", dtype=dtype)(y)
  return keras.layers.Add(name=f"{name}_add", dtype=dtype)([x, y])


def _upsample(x, filters, name, dtype):
  """ConvTranspose2d(k3, s2, p1, output_padding=1) == 'valid' transposed conv minus first row/col."""
  x = Conv2DTranspose(
      filters, 3, strides=2, padding="valid", kernel_initializer=weight_init(),
      bias_initializer="zeros", name=f"{name}_deconv", dtype=dtype, instance_normalized=True)(x)
  x = Cropping2D(((1, 0), (1, 0)), name=f"{name}_crop", dtype=dtype)(x)
  x = InstanceNormalization(name=f"{name}_norm", dtype=dtype)(x)
  return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def resnet_generator(ngf=64, n_blocks=9, name="generator", dtype="float32"):
  """Reference `resnet_9blocks` / `resnet_6blocks`; input sides must be multiples of 4.

  dtype: the Keras dtype policy of every layer but the last (e.g. "mixed_bfloat16"), passed
  rather than taken from Keras's process-wide policy.
  """
  inputs = keras.Input(shape=(None, None, 3), name="image")
  x = ReflectionPad2D(3, name="stem_pad", dtype=dtype)(inputs)
  x = conv(ngf, 7, name="stem_conv", dtype=dtype, instance_normalized=True)(x)
  x = InstanceNormalization(name="stem_norm", dtype=dtype)(x)
  x = keras.layers.ReLU(name="stem_relu", dtype=dtype)(x)
  for i, mult in enumerate((1, 2)):
    x = keras.layers.ZeroPadding2D(1, name=f"down{i}_pad", dtype=dtype)(x)
    x = conv(ngf * mult * 2, 3, strides=2, name=f"down{i}_conv", dtype=dtype,
             instance_normalized=True)(x)
    x = InstanceNormalization(name=f"down{i}_norm", dtype=dtype)(x)
    x = keras.layers.ReLU(name=f"down{i}_relu", dtype=dtype)(x)
  for i in range(n_blocks):
    x = _residual_block(x, ngf * 4, f"block{i}", dtype)
  x = _upsample(x, ngf * 2, "up0", dtype)
  x = _upsample(x, ngf, "up1", dtype)
  x = ReflectionPad2D(3, name="head_pad", dtype=dtype)(x)
  x = conv(3, 7, name="head_conv", dtype=dtype)(x)
  # tanh in float32 so that mixed precision never quantises the output image.
  outputs = keras.layers.Activation("tanh", dtype="float32", name="head_tanh")(x)
  return keras.Model(inputs, outputs, name=name)


def norm_layers(generator):
  """The generator's instance norms, in the order its forward pass meets them."""
  return [l for l in generator.layers if isinstance(l, InstanceNormalization)]


def run_generator(generator, x, normalize, stop_before=None):
  """resnet_generator's forward pass, layer by layer, with `normalize(i, x)` for its i-th norm.

  Lets tiled translation normalise with statistics of the whole image instead of the tile's.
  Relies on resnet_generator's layer order: a residual block's input is added back at its
  `_add`. With `stop_before` (a norm index), returns that norm's input instead.
  """
  norms = {id(layer): i for i, layer in enumerate(norm_layers(generator))}
  block_input = None
  for layer in generator.layers[1:]:
    if layer.name.endswith("_pad1"):
      block_input = x
    if isinstance(layer, keras.layers.Add):
      x = block_input + x
    elif id(layer) in norms:
      if norms[id(layer)] == stop_before:
        return x
      x32 = normalize(norms[id(layer)], tf.cast(x, tf.float32))
      x = tf.cast(x32, x.dtype)
    else:
      x = layer(x)
  return x


def patch_discriminator(ndf=64, n_layers=3, name="discriminator", dtype="float32"):
  """Reference `basic` PatchGAN: 70x70 receptive field for n_layers=3; returns logits."""
  inputs = keras.Input(shape=(None, None, 3), name="image")
  x = keras.layers.ZeroPadding2D(1, name="layer0_pad", dtype=dtype)(inputs)
  x = conv(ndf, 4, strides=2, name="layer0_conv", dtype=dtype)(x)
  x = keras.layers.LeakyReLU(0.2, name="layer0_lrelu", dtype=dtype)(x)
  mult = 1
  for i in range(1, n_layers + 1):
    mult = min(2**i, 8)
    strides = 2 if i < n_layers else 1
    x = keras.layers.ZeroPadding2D(1, name=f"layer{i}_pad", dtype=dtype)(x)
    x = conv(ndf * mult, 4, strides=strides, name=f"layer{i}_conv", dtype=dtype,
             instance_normalized=True)(x)
    x = InstanceNormalization(name=f"layer{i}_norm", dtype=dtype)(x)
    x = keras.layers.LeakyReLU(0.2, name=f"layer{i}_lrelu", dtype=dtype)(x)
  x = keras.layers.ZeroPadding2D(1, name="head_pad", dtype=dtype)(x)
  x = conv(1, 4, name="head_conv", dtype=dtype)(x)
  outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
  return keras.Model(inputs, outputs, name=name)


@contextlib.contextmanager
def compute_dtype(model, policy):
  """Runs `model` in another precision, on the same float32 weights, within the block.

  The last layer (the float32 output) keeps its policy. Used to trace a bf16 copy of a
  graph that shares its variables with the float32 one.
  """
  layers = model.layers[:-1]
  saved = [layer.dtype_policy for layer in layers]
  for layer in layers:
    layer.dtype_policy = policy
  try:
    yield model
  finally:
    for layer, old in zip(layers, saved):
      layer.dtype_policy = old


def build_models(config):
  """The four networks of a CycleGAN, named by what they map, in config.precision."""
  dtype = POLICIES[config.precision]
  gen = lambda n: resnet_generator(config.ngf, config.n_blocks, name=n, dtype=dtype)
  disc = lambda n: patch_discriminator(config.ndf, config.n_layers_d, name=n, dtype=dtype)
  return {
      "generator_a2b": gen("generator_a2b"),
      "generator_b2a": gen("generator_b2a"),
      "discriminator_a": disc("discriminator_a"),
      "discriminator_b": disc("discriminator_b"),
  }
