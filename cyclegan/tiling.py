"""Tiled translation of large images with instance-norm statistics of the whole image.

A tile normalised by its own statistics gets its own contrast, and the borders between tiles
show. Here every tile is normalised with statistics of the whole image:
  - the first `exact_norms` norms (stem and the two downsampling layers, at full and half
    resolution) get exact statistics: tiled passes run the network up to each norm and
    combine its input's moments over tile cores (the earlier norms already exact);
  - the others (the residual trunk at 1/4 resolution and the upsampling layers) get those of
    the whole image downscaled by `stats_downscale` (more if the memory budget needs it).
Measured on a 2048x2048 mosaic of four photos, tile 512 against the whole image (default model):
downscaled statistics alone, mean 1.88 levels (1/4); exact first three, 0.80
(tools/tiling_table.py --exact_norms 0,3). The first three cost about 10% of the output pass in
FLOPs, the downscaled pass 1/16 of it.

Tiles get `halo` pixels of context from their neighbours on each inner side, cropped away after;
on the image's own borders the network's reflect padding works as on the whole image. Memory:
the image stays uint8 (no float copy), and tile sizes follow a budget (MemoryBudget).
"""

import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from cyclegan import any_size
from cyclegan import export
from cyclegan import images as images_lib
from cyclegan import models

HALO = 32  # Measured: 16, 32 and 64 give the same output on the mosaic (tools/tiling_table.py).


def tile_boxes(length, tile, halo, align=4):
  """[(start, stop, core_start, core_stop)] along one axis: cores of about `tile` pixels
  covering [0, length), each read with at least `halo` more pixels on its inner sides, in
  pieces of one length (each new input shape costs oneDNN memory for its primitives: measured
  +150-250 MB per shape at 1 MP, full-size model); all multiples of `align` (the generator's
  stride), so that tiles see the whole image's pixel grid."""
  count = max(1, -(-length // tile))
  cuts = [min(length, round(i * length / count / align) * align) for i in range(count + 1)]
  cuts[-1] = length
  piece = min(length, max(b - a for a, b in zip(cuts, cuts[1:])) + 2 * halo)
  boxes = []
  for a, b in zip(cuts, cuts[1:]):
    start = min(max(0, a - halo), length - piece)
    boxes.append((start, start + piece, a, b))
  return boxes


def _normalize_with(means, variances):
  """normalize(i, x) for models.run_generator with given statistics."""
  return lambda i, x: (x - means[i]) * tf.math.rsqrt(variances[i] + models.INSTANCE_NORM_EPSILON)


class SharedStatistics:
  """Translates uint8 [H, W, 3] images of any size in tiles, seamlessly.

  Per call: `tile`, the core side of a tile, and `stats_pixels`, the most pixels the
  downscaled statistics pass may take in one piece (None: as many as a tile read with its
  halo), so that its memory is bounded too.
  """

  def __init__(self, generator, halo=HALO, exact_norms=3, stats_downscale=4):
    self.generator = generator
    self.halo = -(-halo // 4) * 4
    self.norms = models.norm_layers(generator)
    self.exact_norms, self.stats_downscale = exact_norms, stats_downscale
    channels = [n.output.shape[-1] for n in self.norms]
    stat_specs = [tf.TensorSpec([1, 1, 1, c], tf.float32) for c in channels]
    image_spec = tf.TensorSpec([1, None, None, 3], tf.uint8)

    @tf.function(input_signature=[image_spec])
    def own_statistics(x):
      found = []
      def normalize(i, x):
        mean, variance = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        found.append((mean, variance))
        return (x - mean) * tf.math.rsqrt(variance + models.INSTANCE_NORM_EPSILON)
      models.run_generator(generator, images_lib.to_unit_range(x), normalize)
      return found

    @tf.function(input_signature=[image_spec, stat_specs, stat_specs])
    def forward(x, means, variances):
      normalize = _normalize_with(means, variances)
      return images_lib.through_unit_range(
          lambda u: tf.cast(models.run_generator(generator, u, normalize), tf.float32), x)

    self._own_statistics = own_statistics
    self._forward = forward
    self._norm_moments_fns = {}  # norm index -> tf.function: moments of its input on a core

  def _norm_moments(self, index):
    """tf.function: mean and variance over a tile's core of the input of norm `index`."""
    if index not in self._norm_moments_fns:
      specs = [tf.TensorSpec([1, 1, 1, n.output.shape[-1]], tf.float32)
               for n in self.norms[:index]]
      @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8), specs, specs,
                                    tf.TensorSpec([4], tf.int32)])
      def norm_moments(x, means, variances, core):
        """core: top, bottom, left, right in x's pixels (multiples of the norm's stride)."""
        out = tf.cast(models.run_generator(
            self.generator, images_lib.to_unit_range(x), _normalize_with(means, variances),
            stop_before=index), tf.float32)
        scale = tf.shape(x)[1] // tf.shape(out)[1]
        core = core // scale
        return tf.nn.moments(out[:, core[0]:core[1], core[2]:core[3]], axes=[1, 2],
                             keepdims=True)
      self._norm_moments_fns[index] = norm_moments
    return self._norm_moments_fns[index]

  def _tiles(self, height, width, tile):
    tile = max(8, tile // 4 * 4)
    for top, bottom, core_top, core_bottom in tile_boxes(height, tile, self.halo):
      for left, right, core_left, core_right in tile_boxes(width, tile, self.halo):
        yield (top, bottom, left, right), (core_top - top, core_bottom - top,
                                           core_left - left, core_right - left)

  def statistics_size(self, height, width, stats_pixels):
    """The (height, width) of the downscaled image the trunk's statistics come from."""
    downscale = max(self.stats_downscale, (height * width / stats_pixels) ** 0.5)
    return tuple(max(8, round(s / downscale / 4) * 4) for s in (height, width))

  def statistics(self, rgb, tile, stats_pixels=None):
    """[(mean, variance)] per norm, float32 [1, 1, 1, C], for all of rgb uint8 [H, W, 3]
    (sides multiples of 4)."""
    height, width = rgb.shape[:2]
    stats_pixels = stats_pixels or (tile + 2 * self.halo) ** 2
    small = Image.fromarray(rgb).resize(
        self.statistics_size(height, width, stats_pixels)[::-1], Image.BOX)
    stats = [tuple(s) for s in self._own_statistics(tf.constant(np.asarray(small)[None]))]
    for index in range(min(self.exact_norms, len(self.norms))):
      norm_moments = self._norm_moments(index)
      means, variances = [m for m, _ in stats[:index]], [v for _, v in stats[:index]]
      count, mean, squares = 0, 0.0, 0.0  # combined over tiles (Chan et al.), in float64
      for (top, bottom, left, right), core in self._tiles(height, width, tile):
        tile_mean, tile_variance = (t.numpy().astype(np.float64) for t in norm_moments(
            rgb[None, top:bottom, left:right], means, variances, core))
        n = (core[1] - core[0]) * (core[3] - core[2])
        delta = tile_mean - mean
        mean = mean + delta * n / (count + n)
        squares = squares + tile_variance * n + delta ** 2 * count * n / (count + n)
        count += n
      stats[index] = (tf.constant(mean.astype(np.float32)),
                      tf.constant((squares / count).astype(np.float32)))
    return stats

  def __call__(self, rgb, tile, stats_pixels=None, smooth=None):
    """uint8 [H, W, 3] of any size -> translated uint8, padded and cropped as every export
    does. Works on uint8 throughout: no float copy of the whole image. `smooth` may change the
    statistics before they are used (temporal.py: averaged over a video's frames)."""
    height, width = rgb.shape[:2]
    top = left = 0
    if height % 4 or width % 4 or min(height, width) < any_size.MIN_SIDE:
      padded, top, left = any_size.pad_to_multiple(tf.constant(rgb[None]))
      rgb, top, left = padded.numpy()[0], int(top), int(left)
    stats = self.statistics(rgb, tile, stats_pixels)
    if smooth:
      stats = smooth(stats)
    means, variances = [m for m, _ in stats], [v for _, v in stats]
    out = np.empty_like(rgb)
    for (t, b, l, r), (ct, cb, cl, cr) in self._tiles(*rgb.shape[:2], tile):
      piece = self._forward(rgb[None, t:b, l:r], means, variances).numpy()[0]
      out[t + ct:t + cb, l + cl:l + cr] = piece[ct:cb, cl:cr]
    return out[top:top + height, left:left + width]


def for_export(loaded, precision, halo=HALO):
  """SharedStatistics for a loaded SavedModel, computing in its `precision` (fp32, bf16)."""
  return SharedStatistics(export.generator_of(loaded, models.POLICIES[precision]), halo)


# --- Memory ----------------------------------------------------------------------------------

DEFAULT_BUDGET = 2.8e9  # bytes: a 6000x4000 or 12000x8000 photo then peaks under 3 GB
IMAGE_BYTES_PER_PIXEL = 12  # uint8: the input, its padded copy, the output, the writer's copy
# Memory per pixel of the pieces the generator runs on, per filter of its first layer (ngf):
# activations plus what oneDNN keeps per input shape for each tf.function (the statistics
# passes and the tiles). Measured over whole tiled 6000x4000 images, full-size generator
# (ngf 64), pieces of 0.9-1.6 MP: fp32 1.5-2.0 KB/px, bf16 1.4-1.6 KB/px; set with a margin.
CALL_BYTES_PER_PIXEL_AND_FILTER = {"fp32": 32, "bf16": 27}
MIN_CALL_PIXELS = 128 * 128


def resident_bytes():
  """This process's resident memory now (Linux), or its peak so far where /proc is missing."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError):
    import resource  # pylint: disable=import-outside-toplevel  (not on Windows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def available_bytes():
  """Memory the system can give without swapping (Linux MemAvailable), else free pages."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError):
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget():
  """DEFAULT_BUDGET, or half the available memory where that is less."""
  return min(DEFAULT_BUDGET, available_bytes() / 2)


class MemoryBudget:
  """How many pixels one generator call may take so the process stays within `budget` bytes:
  what is left after the memory held now (runtime, model) and the image's own uint8 arrays."""

  def __init__(self, budget, ngf, precision):
    self.budget = budget
    self.held = resident_bytes()
    self.call_bytes_per_pixel = CALL_BYTES_PER_PIXEL_AND_FILTER[precision] * ngf

  def call_pixels(self, image_pixels):
    free = self.budget - self.held - IMAGE_BYTES_PER_PIXEL * image_pixels
    return max(MIN_CALL_PIXELS, int(free // self.call_bytes_per_pixel))

  def tile(self, image_pixels, halo=HALO):
    """Core side of tiles whose halo-read pieces fit call_pixels."""
    return max(64, (int(self.call_pixels(image_pixels) ** 0.5) - 2 * halo) // 4 * 4)
