"""ResNet generator and PatchGAN discriminator, layer for layer as the PyTorch reference.

Every padding, norm and transposed-conv choice here matches PyTorch's numerics (checked in
tests/models_test.py and against tools/torch_reference.py); the Keras defaults that differ
(padding="same", eps 1e-3, LeakyReLU 0.3) are avoided on purpose. All models are fully
convolutional: inputs are (None, None, None, 3). The convolutions go through
cyclegan/kernels/, which picks faster CPU routes for the same sums unless switched off.
"""

import keras
import tensorflow as tf

from cyclegan import kernels
from cyclegan.kernels import per_graph

# The reference's InstanceNorm2d epsilon, for every place that normalises as the generator
# does (tiling, videos). cuDNN has had no minimum epsilon since 7.5.
INSTANCE_NORM_EPSILON = 1e-5

# --precision -> the Keras dtype policy the networks are built with (weights stay float32).
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def weight_init():
  """N(0, 0.02), a new initializer per layer: one shared instance would give every layer of a
  shape the same weights (a Keras initializer draws the same values on every call)."""
  return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


@keras.saving.register_keras_serializable(package="cyclegan")
class ReflectionPad2D(keras.layers.Layer):
  """Reflect padding (PyTorch ReflectionPad2d); Keras has only zero padding."""

  def __init__(self, padding, **kwargs):
    super().__init__(**kwargs)
    self.padding = padding

  def call(self, x, training=None):
    return kernels.reflect_pad(x, self.padding, training)

  def compute_output_shape(self, input_shape):
    grow = lambda d: None if d is None else d + 2 * self.padding
    return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

  def get_config(self):
    return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="cyclegan")
class InstanceNormalization(keras.layers.Layer):
  """InstanceNorm2d(affine=False): per sample and channel, biased variance. One fused batch
  norm over the batch's channels side by side ([1, H, W, N*C]): statistics in float32 whatever
  the compute dtype, one kernel for its gradient, and TFLite and ONNX convert it."""

  def __init__(self, epsilon=INSTANCE_NORM_EPSILON, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def call(self, x):
    if x.shape[0] == 1 and x.shape[-1] is not None:  # Channels already side by side.
      return self._fused(x, x.shape[-1])
    shape = tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    y = self._fused(tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, n * c]), n * c)
    return tf.transpose(tf.reshape(y, [h, w, n, c]), [2, 0, 1, 3])

  def _fused(self, y, channels):
    """Batch norm of [1, H, W, channels] with batch statistics: each channel on its own."""
    scale, offset, empty = _norm_constants(channels, y.device)
    y, *_ = tf.raw_ops.FusedBatchNormV3(x=y, scale=scale, offset=offset, mean=empty,
                                        variance=empty, epsilon=self.epsilon, is_training=True)
    return y

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


def _norm_constants(channels, device):
  """FusedBatchNorm's constant inputs, once per traced graph, channel count and device (each
  replica its own): made per call, they were ~600 graph ops a step."""
  make = lambda: (tf.ones([channels]), tf.zeros([channels]), tf.constant([], tf.float32))
  if not isinstance(channels, int):
    return make()
  return per_graph.once_per_graph(("instance_norm", channels, device), make,
                                  "instance_norm_constants/")


class _BiasBeforeNorm:
  """A convolution's `instance_normalized` flag (its output goes straight into an instance
  norm) and its bias as one BiasAdd (Keras's reshapes and squeezes were ~950 ops a training
  step), left out where kernels.bias_cancelled says so."""

  def __init__(self, *args, instance_normalized=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.instance_normalized = instance_normalized

  def get_config(self):
    return {**super().get_config(), "instance_normalized": self.instance_normalized}

  def _add_bias(self, y, training):
    return y if kernels.bias_cancelled(self, training) else tf.nn.bias_add(y, self.bias)


@keras.saving.register_keras_serializable(package="cyclegan")
class Conv2D(_BiasBeforeNorm, keras.layers.Conv2D):
  """Keras's Conv2D: the same weights and numbers, computed by kernels.convolve."""

  def call(self, x, training=None):
    return self._add_bias(kernels.convolve(self, x, training), training)


@keras.saving.register_keras_serializable(package="cyclegan")
class Conv2DTranspose(_BiasBeforeNorm, keras.layers.Conv2DTranspose):
  """Keras's 'valid' Conv2DTranspose: the same weights and numbers, computed by
  kernels.conv_transpose."""

  def call(self, x, training=None):
    if self.output_padding or self.padding != "valid" or tuple(self.dilation_rate) != (1, 1):
      return super().call(x)
    return self._add_bias(kernels.conv_transpose(self, x, training), training)


@keras.saving.register_keras_serializable(package="cyclegan")
class Cropping2D(keras.layers.Cropping2D):
  """Keras's Cropping2D, by tf.slice where it crops from the top and left only: its gradient
  is a Pad (~1 ms) instead of the strided slice's StridedSliceGrad (13-25 ms in bf16 on CPU)."""

  def call(self, x):
    (top, bottom), (left, right) = self.cropping
    if bottom or right:
      return super().call(x)
    return tf.slice(x, [0, top, left, 0], [-1, -1, -1, -1])


def conv(filters, kernel_size, strides=1, name=None, dtype="float32", instance_normalized=False):
  return Conv2D(
      filters, kernel_size, strides=strides, padding="valid", kernel_initializer=weight_init(),
      bias_initializer="zeros", name=name, dtype=dtype, instance_normalized=instance_normalized)


def residual_block(x, filters, name, dtype):
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
  dtype: the Keras dtype policy of every layer but the last (e.g. "mixed_bfloat16")."""
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
    x = residual_block(x, ngf * 4, f"block{i}", dtype)
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
  """resnet_generator's forward pass, layer by layer, with `normalize(i, x)` for its i-th norm
  (tiles and video frames normalise with statistics of more than themselves); with
  `stop_before` (a norm index), that norm's input. A block's input is added back at `_add`."""
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
