"""The InceptionV3 that pytorch-fid and TTUR compute FID with, in Keras, from pytorch-fid's file.

Published FIDs come from the 2015 TensorFlow graph (inception-2015-12-05), not from Keras's
ImageNet InceptionV3 (metrics.inception): other weights, and its last block max-pools where
the paper averages. pytorch-fid ported that graph to PyTorch as a torchvision inception_v3
state dict (URL); this builds the same network from that file, read without PyTorch. It takes
299x299 images in [-1, 1] (metrics.inception_features resizes and scales as pytorch-fid does:
bilinear, half-pixel centres, no antialiasing) and gives the 2048 pool3 features.
"""

import keras
import numpy as np

from cyclegan import pth_reader

FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FILE_NAME
SIZE = 299
BN_EPSILON = 0.001
UNUSED_KEYS = ("fc.weight", "fc.bias")  # the 1008-way classifier: FID stops at pool3


class _Builder:
  """Makes the network's layers from a state dict, checking each key and shape as it goes,
  and remembers the keys it used (to refuse a file with others: another network's weights)."""

  def __init__(self, state):
    self.state = state
    self.used = set(UNUSED_KEYS)

  def _take(self, key, shape):
    if key not in self.state:
      raise ValueError(f"{key} is missing: not pytorch-fid's Inception weights")
    value = self.state[key]
    if value.shape != shape:
      raise ValueError(f"{key} has shape {value.shape}, where pytorch-fid's Inception has {shape}")
    self.used.add(key)
    return value.astype(np.float64)

  def conv(self, x, name, filters, kernel, strides=1, padding="same"):
    """torchvision's BasicConv2d (conv without bias, batch norm in inference form, ReLU) as one
    convolution with the norm folded in (in float64, then rounded once to float32).
    pytorch-fid pads only stride-1 convolutions with odd kernels, by k // 2: TF's "same"."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = self._take(f"{name}.conv.weight", (filters, x.shape[-1], *kernel))
    gamma, beta, mean, var = (self._take(f"{name}.bn.{p}", (filters,))
                              for p in ("weight", "bias", "running_mean", "running_var"))
    self.used.add(f"{name}.bn.num_batches_tracked")
    scale = gamma / np.sqrt(var + BN_EPSILON)
    layer = keras.layers.Conv2D(filters, kernel, strides, padding, activation="relu", name=name)
    y = layer(x)
    layer.set_weights([(weight.transpose(2, 3, 1, 0) * scale).astype(np.float32),
                       (beta - mean * scale).astype(np.float32)])
    return y

  def check_unused(self):
    extra = sorted(set(self.state) - self.used)
    if extra:
      raise ValueError(f"{extra[0]} is not a key of pytorch-fid's Inception ({len(extra)} such "
                       "keys): another network's weights?")


def _avg_pool(x):
  """3x3 stride-1 average over real pixels only (pytorch-fid's count_include_pad=False,
  TF's "same")."""
  return keras.layers.AveragePooling2D(3, 1, "same")(x)


def _max_pool(x, strides=2, padding="valid"):
  return keras.layers.MaxPooling2D(3, strides, padding)(x)


def _block_a(b, x, name, pool_features):
  return keras.layers.Concatenate(name=name)([
      b.conv(x, f"{name}.branch1x1", 64, 1),
      b.conv(b.conv(x, f"{name}.branch5x5_1", 48, 1), f"{name}.branch5x5_2", 64, 5),
      b.conv(b.conv(b.conv(x, f"{name}.branch3x3dbl_1", 64, 1), f"{name}.branch3x3dbl_2", 96, 3),
             f"{name}.branch3x3dbl_3", 96, 3),
      b.conv(_avg_pool(x), f"{name}.branch_pool", pool_features, 1)])


def _block_b(b, x, name):
  dbl = b.conv(b.conv(x, f"{name}.branch3x3dbl_1", 64, 1), f"{name}.branch3x3dbl_2", 96, 3)
  return keras.layers.Concatenate(name=name)([
      b.conv(x, f"{name}.branch3x3", 384, 3, 2, "valid"),
      b.conv(dbl, f"{name}.branch3x3dbl_3", 96, 3, 2, "valid"),
      _max_pool(x)])


def _block_c(b, x, name, c7):
  b7 = b.conv(x, f"{name}.branch7x7_1", c7, 1)
  b7 = b.conv(b7, f"{name}.branch7x7_2", c7, (1, 7))
  b7 = b.conv(b7, f"{name}.branch7x7_3", 192, (7, 1))
  dbl = b.conv(x, f"{name}.branch7x7dbl_1", c7, 1)
  for i, (filters, kernel) in enumerate([(c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))]):
    dbl = b.conv(dbl, f"{name}.branch7x7dbl_{i + 2}", filters, kernel)
  return keras.layers.Concatenate(name=name)([
      b.conv(x, f"{name}.branch1x1", 192, 1), b7, dbl,
      b.conv(_avg_pool(x), f"{name}.branch_pool", 192, 1)])


def _block_d(b, x, name):
  b3 = b.conv(b.conv(x, f"{name}.branch3x3_1", 192, 1), f"{name}.branch3x3_2", 320, 3, 2, "valid")
  b7 = b.conv(x, f"{name}.branch7x7x3_1", 192, 1)
  b7 = b.conv(b7, f"{name}.branch7x7x3_2", 192, (1, 7))
  b7 = b.conv(b7, f"{name}.branch7x7x3_3", 192, (7, 1))
  b7 = b.conv(b7, f"{name}.branch7x7x3_4", 192, 3, 2, "valid")
  return keras.layers.Concatenate(name=name)([b3, b7, _max_pool(x)])


def _block_e(b, x, name, pool):
  """pool: the 2015 graph averages in Mixed_7b but max-pools in Mixed_7c."""
  b3 = b.conv(x, f"{name}.branch3x3_1", 384, 1)
  dbl = b.conv(b.conv(x, f"{name}.branch3x3dbl_1", 448, 1), f"{name}.branch3x3dbl_2", 384, 3)
  return keras.layers.Concatenate(name=name)([
      b.conv(x, f"{name}.branch1x1", 320, 1),
      b.conv(b3, f"{name}.branch3x3_2a", 384, (1, 3)),
      b.conv(b3, f"{name}.branch3x3_2b", 384, (3, 1)),
      b.conv(dbl, f"{name}.branch3x3dbl_3a", 384, (1, 3)),
      b.conv(dbl, f"{name}.branch3x3dbl_3b", 384, (3, 1)),
      b.conv(pool(x), f"{name}.branch_pool", 192, 1)])


def build(state_dict):
  """keras.Model: float32 [n, 299, 299, 3] in [-1, 1] -> [n, 2048] pool3 features, from a
  state dict (name -> numpy array) in pytorch-fid's layout; ValueError names the first key
  that is missing, of another shape, or not the network's."""
  b = _Builder(state_dict)
  inputs = keras.Input((SIZE, SIZE, 3))
  x = b.conv(inputs, "Conv2d_1a_3x3", 32, 3, 2, "valid")
  x = b.conv(x, "Conv2d_2a_3x3", 32, 3, padding="valid")
  x = _max_pool(b.conv(x, "Conv2d_2b_3x3", 64, 3))
  x = b.conv(x, "Conv2d_3b_1x1", 80, 1)
  x = _max_pool(b.conv(x, "Conv2d_4a_3x3", 192, 3, padding="valid"))
  for name, pool_features in [("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)]:
    x = _block_a(b, x, name, pool_features)
  x = _block_b(b, x, "Mixed_6a")
  for name, c7 in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)]:
    x = _block_c(b, x, name, c7)
  x = _block_d(b, x, "Mixed_7a")
  x = _block_e(b, x, "Mixed_7b", _avg_pool)
  x = _block_e(b, x, "Mixed_7c", lambda y: _max_pool(y, 1, "same"))
  b.check_unused()
  return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="fid_inception_v3")


def load(path):
  """build() from pytorch-fid's weight file (FILE_NAME, downloaded from URL), read without
  PyTorch; ValueError, one line naming the file, if it is not that file."""
  try:
    return build(pth_reader.load(path))
  except ValueError as e:  # pth_reader.PthError too: not a state dict at all
    raise ValueError(f"{path}: {e}") from e
