"""CUT's networks (Park et al., ECCV 2020), layer for layer as its authors' PyTorch code.

The generator is the ResNet generator with anti-aliased sampling: each stride-2 convolution
becomes a stride-1 one followed by a binomial blur taken at every second pixel, and each
transposed convolution an upsampling by that blur followed by a stride-1 convolution. The
discriminator is the PatchGAN with the same anti-aliased downsampling. Residual blocks, norms
and padding are models.py's.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from cyclegan import models

# The reference nn.Sequential's module indices whose outputs PatchNCE compares: the padded
# input, the two down convolutions' raw outputs, the outputs of residual blocks 1 and 5.
NCE_LAYERS = (0, 4, 8, 12, 16)


def binomial(taps):
  """The 1-D binomial blur (Pascal's row), summing to 1; the 2-D blur is its outer square."""
  row = np.array([math.comb(taps - 1, i) for i in range(taps)], np.float64)
  return row / row.sum()


@keras.saving.register_keras_serializable(package="cyclegan")
class BlurDownsample(keras.layers.Layer):
  """Reflect-pad 1, blur each channel by the 3x3 binomial filter, keep every second pixel
  (the authors' Downsample). The filter is a constant, not a weight."""

  def call(self, x):
    channels = x.shape[-1]
    blur = np.outer(binomial(3), binomial(3))[:, :, None, None]
    blur = tf.constant(np.tile(blur, [1, 1, channels, 1]), x.dtype)
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(x, blur, [1, 2, 2, 1], "VALID")

  def compute_output_shape(self, input_shape):
    half = lambda d: None if d is None else (d + 1) // 2
    return (input_shape[0], half(input_shape[1]), half(input_shape[2]), input_shape[3])


@keras.saving.register_keras_serializable(package="cyclegan")
class BlurUpsample(keras.layers.Layer):
  """Twice the size by the authors' Upsample: replicate-pad 1, a transposed 4x4 binomial blur
  at stride 2, cropped. Its 1-D filter (1, 3, 3, 1)/4 puts 3/4 of a pixel and 1/4 of its
  neighbour into each output, with edges replicated: bilinear resizing with half-pixel
  centres, which is what this runs (one op, with a gradient, in TFLite and ONNX too)."""

  def call(self, x):
    size = tf.shape(x)[1:3] * 2
    return tf.cast(tf.image.resize(tf.cast(x, tf.float32), size, "bilinear"), x.dtype)

  def compute_output_shape(self, input_shape):
    twice = lambda d: None if d is None else 2 * d
    return (input_shape[0], twice(input_shape[1]), twice(input_shape[2]), input_shape[3])


def _conv_norm_relu(x, filters, kernel_size, name, dtype, relu):
  """Zero-pad 1, a stride-1 convolution, instance norm, then `relu` (PyTorch's padding=1)."""
  x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad", dtype=dtype)(x)
  x = models.conv(filters, kernel_size, name=f"{name}_conv", dtype=dtype,
                  instance_normalized=True)(x)
  x = models.InstanceNormalization(name=f"{name}_norm", dtype=dtype)(x)
  return relu(name=f"{name}_relu", dtype=dtype)(x)


def cut_generator(ngf=64, n_blocks=9, name="generator", dtype="float32"):
  """The authors' resnet_9blocks with anti-aliasing (their default); sides multiples of 4."""
  inputs = keras.Input(shape=(None, None, 3), name="image")
  x = models.ReflectionPad2D(3, name="stem_pad", dtype=dtype)(inputs)
  x = models.conv(ngf, 7, name="stem_conv", dtype=dtype, instance_normalized=True)(x)
  x = models.InstanceNormalization(name="stem_norm", dtype=dtype)(x)
  x = keras.layers.ReLU(name="stem_relu", dtype=dtype)(x)
  for i, mult in enumerate((1, 2)):
    x = _conv_norm_relu(x, ngf * mult * 2, 3, f"down{i}", dtype, keras.layers.ReLU)
    x = BlurDownsample(name=f"down{i}_blur", dtype=dtype)(x)
  for i in range(n_blocks):
    x = models.residual_block(x, ngf * 4, f"block{i}", dtype)
  for i, mult in enumerate((4, 2)):
    x = BlurUpsample(name=f"up{i}_blur", dtype=dtype)(x)
    x = _conv_norm_relu(x, ngf * mult // 2, 3, f"up{i}", dtype, keras.layers.ReLU)
  x = models.ReflectionPad2D(3, name="head_pad", dtype=dtype)(x)
  x = models.conv(3, 7, name="head_conv", dtype=dtype)(x)
  outputs = keras.layers.Activation("tanh", dtype="float32", name="head_tanh")(x)
  return keras.Model(inputs, outputs, name=name)


def cut_discriminator(ndf=64, n_layers=3, name="discriminator", dtype="float32"):
  """The authors' `basic` PatchGAN with anti-aliasing: each stride-2 convolution at stride 1,
  then BlurDownsample; returns logits."""
  leaky = lambda name, dtype: keras.layers.LeakyReLU(0.2, name=name, dtype=dtype)
  inputs = keras.Input(shape=(None, None, 3), name="image")
  x = keras.layers.ZeroPadding2D(1, name="layer0_pad", dtype=dtype)(inputs)
  x = models.conv(ndf, 4, name="layer0_conv", dtype=dtype)(x)
  x = leaky("layer0_lrelu", dtype)(x)
  x = BlurDownsample(name="layer0_blur", dtype=dtype)(x)
  for i in range(1, n_layers + 1):
    x = _conv_norm_relu(x, ndf * min(2**i, 8), 4, f"layer{i}", dtype, leaky)
    if i < n_layers:
      x = BlurDownsample(name=f"layer{i}_blur", dtype=dtype)(x)
  x = keras.layers.ZeroPadding2D(1, name="head_pad", dtype=dtype)(x)
  x = models.conv(1, 4, name="head_conv", dtype=dtype)(x)
  outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
  return keras.Model(inputs, outputs, name=name)


def networks(antialias):
  """(generator, discriminator) builders of a CUT run: the anti-aliased ones, or with
  --noantialias CycleGAN's (models.py)."""
  if antialias:
    return cut_generator, cut_discriminator
  return models.resnet_generator, models.patch_discriminator


def sequential_layers(generator):
  """Our layers whose outputs are the reference nn.Sequential's module outputs, index for
  index: PyTorch folds zero padding into its convolutions, and a residual block is one module
  (its output is our `_add`)."""
  return [layer for layer in generator.layers[1:]
          if not isinstance(layer, keras.layers.ZeroPadding2D) and
          (not layer.name.startswith("block") or layer.name.endswith("_add"))]


def nce_encoder(generator, layers=NCE_LAYERS):
  """The generator's first layers as a model whose outputs are PatchNCE's features."""
  chosen = sequential_layers(generator)
  return keras.Model(generator.input, [chosen[i].output for i in layers],
                     name=f"{generator.name}_encoder")


def with_nce_features(generator, layers=NCE_LAYERS):
  """The generator as a model that also returns PatchNCE's features of its input: the pass
  that translates an image computes them too, so they need no pass of their own."""
  chosen = sequential_layers(generator)
  return keras.Model(generator.input, [generator.output] + [chosen[i].output for i in layers],
                     name=f"{generator.name}_with_features")


def xavier_init(model, seed, gain=0.02):
  """CUT's init: every convolution's kernel Xavier normal (gain 0.02, untruncated), a new
  draw per layer; biases stay zero."""
  for i, layer in enumerate(l for l in model.layers if isinstance(l, keras.layers.Conv2D)):
    init = keras.initializers.VarianceScaling(gain**2, "fan_avg", "untruncated_normal",
                                              seed=seed * 1000 + i)
    layer.kernel.assign(init(layer.kernel.shape))
