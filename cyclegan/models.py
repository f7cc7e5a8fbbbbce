"""ResNet generator and PatchGAN discriminator, layer for layer as the PyTorch reference.

Every padding, norm and transposed-conv choice here follows the numerics checked in
shared/REFERENCE.md; the Keras defaults that differ (padding="same", eps 1e-3, LeakyReLU 0.3)
are avoided on purpose. All models are fully convolutional: inputs are (None, None, None, 3).
"""

import contextlib

import keras
import tensorflow as tf



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

  def call(self, x):
    p = self.padding
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")

  def compute_output_shape(self, input_shape):
    grow = lambda d: None if d is None else d + 2 * self.padding
    return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

  def get_config(self):
    return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="cyclegan")
class InstanceNormalization(keras.layers.Layer):
  """InstanceNorm2d(affine=False): per sample and channel, eps 1e-5, biased variance.

  Statistics and normalisation in float32 whatever the compute dtype. Same numbers as
  GroupNormalization(groups=-1), but moments over H, W directly (no reshape to groups) run
  15% faster in a bf16 generator step on CPU.
  """

  def __init__(self, epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def call(self, x):
    x32 = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x32, axes=[1, 2], keepdims=True)
    return tf.cast((x32 - mean) * tf.math.rsqrt(variance + self.epsilon), x.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


def instance_norm(name):
  return InstanceNormalization(name=name)


def conv(filters, kernel_size, strides=1, name=None):
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding="valid",
      kernel_initializer=weight_init(), bias_initializer="zeros", name=name)


def _residual_block(x, filters, name):
  y = ReflectionPad2D(1, name=f"{name}_pad1")(x)
  y = conv(filters, 3, name=f"{name}_conv1")(y)
  y = instance_norm(f"{name}_norm1")(y)
  y = keras.layers.ReLU(name=f"{name}_relu")(y)
  y = ReflectionPad2D(1, name=f"{name}_pad2")(y)
  y = conv(filters, 3, name=f"{name}_conv2")(y)
  y = instance_norm(f"{name}_norm2")(y)
  return keras.layers.Add(name=f"{name}_add")([x, y])


def _upsample(x, filters, name):
  """ConvTranspose2d(k3, s2, p1, output_padding=1) == 'valid' transposed conv minus first row/col."""
  x = keras.layers.Conv2DTranspose(
      filters, 3, strides=2, padding="valid", kernel_initializer=weight_init(),
      bias_initializer="zeros", name=f"{name}_deconv")(x)
  x = keras.layers.Cropping2D(((1, 0), (1, 0)), name=f"{name}_crop")(x)
  x = instance_norm(f"{name}_norm")(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x)


def resnet_generator(ngf=64, n_blocks=9, name="generator"):
  """Reference `resnet_9blocks` / `resnet_6blocks`; input sides must be multiples of 4."""
  inputs = keras.Input(shape=(None, None, 3), name="image")
  x = ReflectionPad2D(3, name="stem_pad")(inputs)
  x = conv(ngf, 7, name="stem_conv")(x)
  x = instance_norm("stem_norm")(x)
  x = keras.layers.ReLU(name="stem_relu")(x)
  for i, mult in enumerate((1, 2)):
    x = keras.layers.ZeroPadding2D(1, name=f"down{i}_pad")(x)
    x = conv(ngf * mult * 2, 3, strides=2, name=f"down{i}_conv")(x)
    x = instance_norm(f"down{i}_norm")(x)
    x = keras.layers.ReLU(name=f"down{i}_relu")(x)
  for i in range(n_blocks):
    x = _residual_block(x, ngf * 4, name=f"block{i}")
  x = _upsample(x, ngf * 2, name="up0")
  x = _upsample(x, ngf, name="up1")
  x = ReflectionPad2D(3, name="head_pad")(x)
  x = conv(3, 7, name="head_conv")(x)
  # tanh in float32 so that mixed precision never quantises the output image.
  outputs = keras.layers.Activation("tanh", dtype="float32", name="head_tanh")(x)
  return keras.Model(inputs, outputs, name=name)


def patch_discriminator(ndf=64, n_layers=3, name="discriminator"):
  """Reference `basic` PatchGAN: 70x70 receptive field for n_layers=3; returns logits."""
  inputs = keras.Input(shape=(None, None, 3), name="image")
  x = keras.layers.ZeroPadding2D(1, name="layer0_pad")(inputs)
  x = conv(ndf, 4, strides=2, name="layer0_conv")(x)
  x = keras.layers.LeakyReLU(0.2, name="layer0_lrelu")(x)
  mult = 1
  for i in range(1, n_layers + 1):
    mult = min(2**i, 8)
    strides = 2 if i < n_layers else 1
    x = keras.layers.ZeroPadding2D(1, name=f"layer{i}_pad")(x)
    x = conv(ndf * mult, 4, strides=strides, name=f"layer{i}_conv")(x)
    x = instance_norm(f"layer{i}_norm")(x)
    x = keras.layers.LeakyReLU(0.2, name=f"layer{i}_lrelu")(x)
  x = keras.layers.ZeroPadding2D(1, name="head_pad")(x)
  x = conv(1, 4, name="head_conv")(x)
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
  """The four networks of a CycleGAN, named by what they map."""
  gen = lambda n: resnet_generator(config.ngf, config.n_blocks, name=n)
  disc = lambda n: patch_discriminator(config.ndf, config.n_layers_d, name=n)
  return {
      "generator_a2b": gen("generator_a2b"),
      "generator_b2a": gen("generator_b2a"),
      "discriminator_a": disc("discriminator_a"),
      "discriminator_b": disc("discriminator_b"),
  }
