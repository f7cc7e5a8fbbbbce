"""Tiled translation of large images with instance-norm statistics of the whole image.

A tile normalised by its own statistics gets its own contrast, and the borders between tiles
show. Here every tile is normalised with statistics of the whole image:
  - the first `exact_norms` norms (stem and the two downsampling layers, at full and half
    resolution) get exact statistics, each from a tiled pass that runs the network up to that
    norm and sums its input over the image (the earlier norms already exact);
  - the others (the residual trunk at 1/4 resolution and the upsampling layers) get those of
    the whole image downscaled by `stats_downscale`, run in one piece.
Measured on a 2048x2048 mosaic of four photos, tile 512 against the whole image (default model):
downscaled statistics alone, mean 1.88 levels (1/4; 1.15 at 1/2 in a prototype); exact first
three, 0.79 (tools/tiling_table.py --exact_norms 0,3). The first three cost about 10% of the output pass in FLOPs, the
downscaled pass 1/16 of it.

Tiles get `halo` pixels of context from their neighbours on each inner side, cropped away after;
on the image's own borders the network's reflect padding works as on the whole image.
"""

import numpy as np
import tensorflow as tf

from cyclegan import any_size
from cyclegan import export
from cyclegan import images as images_lib
from cyclegan import models

EPSILON = 1e-5  # InstanceNormalization's
HALO = 32  # Measured: 16, 32 and 64 give the same output on the mosaic (tools/tiling_table.py).


def tile_boxes(length, tile, halo, align=4):
  """[(start, stop, core_start, core_stop)] along one axis: cores of about `tile` pixels
  covering [0, length), each read with `halo` more pixels on its inner sides; all multiples of
  `align` (the generator's stride), so that tiles see the whole image's pixel grid."""
  count = max(1, -(-length // tile))
  cuts = [min(length, round(i * length / count / align) * align) for i in range(count + 1)]
  cuts[-1] = length
  return [(max(0, a - halo), min(length, b + halo), a, b) for a, b in zip(cuts, cuts[1:])]


def _normalize_with(means, variances):
  """normalize(i, x) for models.run_generator with given statistics."""
  return lambda i, x: (x - means[i]) * tf.math.rsqrt(variances[i] + EPSILON)


class SharedStatistics:
  """Translates float [1, H, W, 3] images (sides multiples of 4) in tiles, seamlessly."""

  def __init__(self, generator, tile, halo=HALO, exact_norms=3, stats_downscale=4):
    self.generator = generator
    self.tile, self.halo = max(8, tile // 4 * 4), -(-halo // 4) * 4
    self.norms = models.norm_layers(generator)
    self.exact_norms, self.stats_downscale = exact_norms, stats_downscale
    channels = [n.output.shape[-1] for n in self.norms]
    stat_specs = [tf.TensorSpec([1, 1, 1, c], tf.float32) for c in channels]
    image_spec = tf.TensorSpec([1, None, None, 3], tf.float32)

    @tf.function(input_signature=[image_spec])
    def own_statistics(x):
      found = []
      def normalize(i, x):
        mean, variance = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        found.append((mean, variance))
        return (x - mean) * tf.math.rsqrt(variance + EPSILON)
      models.run_generator(generator, x, normalize)
      return found

    @tf.function(input_signature=[image_spec, stat_specs, stat_specs])
    def forward(x, means, variances):
      return models.run_generator(generator, x, _normalize_with(means, variances))

    self._own_statistics = own_statistics
    self._forward = forward
    self._norm_inputs = {}  # norm index -> tf.function returning that norm's input

  def _norm_input(self, index):
    if index not in self._norm_inputs:
      specs = [tf.TensorSpec([1, 1, 1, n.output.shape[-1]], tf.float32)
               for n in self.norms[:index]]
      @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32), specs, specs])
      def norm_input(x, means, variances):
        return tf.cast(models.run_generator(self.generator, x, _normalize_with(means, variances),
                                            stop_before=index), tf.float32)
      self._norm_inputs[index] = norm_input
    return self._norm_inputs[index]

  def _tiles(self, height, width):
    for top, bottom, core_top, core_bottom in tile_boxes(height, self.tile, self.halo):
      for left, right, core_left, core_right in tile_boxes(width, self.tile, self.halo):
        yield (top, bottom, left, right), (core_top - top, core_bottom - top,
                                           core_left - left, core_right - left)

  def statistics(self, x):
    """[(mean, variance)] per norm, float32 [1, 1, 1, C], for the whole of x [1, H, W, 3]."""
    height, width = x.shape[1:3]
    small = [max(8, round(s / self.stats_downscale / 4) * 4) for s in (height, width)]
    stats = [tuple(s) for s in self._own_statistics(
        tf.image.resize(x, small, method="area", antialias=True))]
    for index in range(min(self.exact_norms, len(self.norms))):
      norm_input = self._norm_input(index)
      means, variances = [m for m, _ in stats[:index]], [v for _, v in stats[:index]]
      shift = stats[index][0].numpy().astype(np.float64)  # for well-conditioned sums
      total = total_sq = 0.0
      count = 0
      for (top, bottom, left, right), (ct, cb, cl, cr) in self._tiles(height, width):
        out = norm_input(x[:, top:bottom, left:right], means, variances).numpy()
        scale = (bottom - top) // out.shape[1]
        core = out[:, ct // scale:cb // scale, cl // scale:cr // scale].astype(np.float64) - shift
        total = total + core.sum(axis=(1, 2), keepdims=True)
        total_sq = total_sq + (core ** 2).sum(axis=(1, 2), keepdims=True)
        count += core.shape[1] * core.shape[2]
      mean = total / count
      stats[index] = (tf.constant((shift + mean).astype(np.float32)),
                      tf.constant((total_sq / count - mean ** 2).astype(np.float32)))
    return stats

  def __call__(self, x):
    """float32 [1, H, W, 3] in [-1, 1] -> the generator's output, tile by tile."""
    stats = self.statistics(x)
    means, variances = [m for m, _ in stats], [v for _, v in stats]
    height, width = x.shape[1:3]
    out = np.empty((1, height, width, 3), np.float32)
    for (top, bottom, left, right), (ct, cb, cl, cr) in self._tiles(height, width):
      tile = self._forward(x[:, top:bottom, left:right], means, variances)
      out[:, top + ct:top + cb, left + cl:left + cr] = tile.numpy()[:, ct:cb, cl:cr]
    return out


def translate_uint8(translator, rgb):
  """uint8 [H, W, 3] of any size -> translated uint8, padded and cropped as every export does."""
  x = images_lib.to_unit_range(rgb[None])
  padded, top, left = any_size.pad_to_multiple(x)
  out = translator(padded)[:, int(top):int(top) + rgb.shape[0], int(left):int(left) + rgb.shape[1]]
  return images_lib.to_uint8(out).numpy()[0]


def for_export(loaded, precision, tile, halo=HALO):
  """SharedStatistics for a loaded SavedModel, computing in its `precision` (fp32, bf16)."""
  return SharedStatistics(export.generator_of(loaded, models.POLICIES[precision]), tile, halo)
