"""Steady colours in video: statistics smoothed over the frames of a shot, flow blending.

Each frame normalised by its own statistics gets its own contrast, and as the camera moves the
colours pump. Here every norm uses an exponential moving average of the frames' statistics
since the last cut, computed inside the same pass (no extra pass per frame); a cut (a change of
colour histogram) starts the average again, so a new scene is not tinted by the last one. Most
of the flicker on a moving scene comes from the strided convolutions, though, and that
FlowBlending averages out. tools/warping_error.py measures both on a synthetic pan.
"""

import cv2
import numpy as np
import tensorflow as tf
from PIL import Image

from cyclegan import any_size
from cyclegan import images as images_lib
from cyclegan import models

MOMENTUM = 0.9  # Weight of the past: about the last 10 frames count (tools/warping_error.py).
CUT_DISTANCE = 0.3  # Histogram distance (0-1) above which a frame starts a new shot.
FLOW_WEIGHT = 0.6  # The previous output's share where the flow holds (tools/warping_error.py).
FLOW_TOLERANCE = 12.0  # Grey levels of input mismatch at which that share falls to 1/e.
_BINS = 16


def blend(previous, current, keep):
  """The moving average's step: keep * previous + (1 - keep) * current (tf or numpy)."""
  return keep * previous + (1.0 - keep) * current


class ShotDetector:
  """Says whether each frame starts a new shot: the first frame does, and any frame whose
  colour histogram (per channel, on a thumbnail) differs from the previous one's by more than
  `threshold` (half the L1 distance, averaged over channels: 0 same, 1 disjoint)."""

  def __init__(self, threshold=CUT_DISTANCE):
    self.threshold = threshold
    self._previous = None

  def histogram(self, frame):
    thumbnail = np.asarray(Image.fromarray(frame).reduce(max(1, min(frame.shape[:2]) // 64)))
    counts = [np.bincount(thumbnail[..., c].ravel() // (256 // _BINS), minlength=_BINS)
              for c in range(3)]
    return np.stack(counts) / thumbnail[..., 0].size

  def starts_shot(self, frame):
    histogram = self.histogram(frame)
    cut = self._previous is None or (
        0.5 * np.abs(histogram - self._previous).sum(axis=1).mean() > self.threshold)
    self._previous = histogram
    return cut


class StableStatistics:
  """Translates batches of consecutive frames, statistics smoothed over each shot.

  Call reset() before each video. Frames whose whole size a call cannot take are translated
  by `tiles` (a tiling.SharedStatistics) with their whole-frame statistics smoothed the same way.
  """

  def __init__(self, generator, momentum=MOMENTUM):
    self.generator = generator
    self.momentum = momentum
    self.norms = models.norm_layers(generator)
    stat_specs = [tf.TensorSpec([1, 1, 1, n.output.shape[-1]], tf.float32) for n in self.norms]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                                  tf.TensorSpec([None], tf.float32), stat_specs, stat_specs])
    def forward(frames, keep, means, variances):
      """keep[i]: the weight of the past for frame i (0 where a shot starts)."""
      carried = []

      def normalize(i, x):
        mean, variance = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        smooth = lambda past, stats: blend(past, stats[0], stats[1])
        mean = tf.scan(smooth, (mean, keep), initializer=means[i][0])
        variance = tf.scan(smooth, (variance, keep), initializer=variances[i][0])
        carried.append((mean[-1:], variance[-1:]))
        return (x - mean) * tf.math.rsqrt(variance + models.INSTANCE_NORM_EPSILON)

      shape = tf.shape(frames)
      padded, top, left = any_size.pad_to_multiple(images_lib.to_unit_range(frames))
      out = models.run_generator(generator, padded, normalize)
      out = tf.cast(out, tf.float32)[:, top:top + shape[1], left:left + shape[2]]
      return images_lib.to_uint8(out), [m for m, _ in carried], [v for _, v in carried]

    self._forward = forward
    self.reset()

  def reset(self):
    """Before a new video."""
    self._carried = None

  def __call__(self, frames, starts):
    """uint8 [N, H, W, 3] consecutive frames -> translated uint8; starts[i]: frame i begins a
    shot (ShotDetector)."""
    keep = np.where(starts, 0.0, self.momentum).astype(np.float32)
    carried = self._carried or [
        [tf.zeros([1, 1, 1, n.output.shape[-1]]) for n in self.norms] for _ in range(2)]
    out, means, variances = self._forward(tf.constant(frames), tf.constant(keep), *carried)
    self._carried = [means, variances]
    return out.numpy()

  def tiled(self, frame, start, tiles, tile, stats_pixels=None):
    """One frame too large for a call (start: it begins a shot): tiles (SharedStatistics)
    with smoothed statistics."""
    keep = 0.0 if start else self.momentum

    def smooth(stats):
      if self._carried is not None and keep:
        stats = [(blend(m0, m, keep), blend(v0, v, keep))
                 for (m, v), m0, v0 in zip(stats, *self._carried)]
      self._carried = [[m for m, _ in stats], [v for _, v in stats]]
      return stats

    return tiles(frame, tile, stats_pixels, smooth=smooth)


class FlowBlending:
  """Blends each output frame with the previous (blended) output, warped along the optical
  flow of the input frames (OpenCV's DIS), where that flow explains the input: the
  generator's strided convolutions translate a scene moved by a few pixels differently
  (flicker that no statistic removes); blending averages it out over the frames.

  weight: the previous frame's share where the flow is right; it falls to 0 where the warped
  previous input differs from the current one (occlusions, new content, wrong flow) by more
  than about `tolerance` grey levels.
  """

  def __init__(self, weight=FLOW_WEIGHT, tolerance=FLOW_TOLERANCE):
    self.weight, self.tolerance = weight, tolerance
    self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    self.reset()

  def reset(self):
    """Before a new video."""
    self._previous = None  # (grey input, float input, float blended output)

  def __call__(self, frames, outputs, starts):
    """uint8 inputs and their translations [N, H, W, 3] -> blended uint8 outputs."""
    blended = []
    for frame, out, start in zip(frames, outputs, starts):
      grey, current = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), out.astype(np.float32)
      if not start and self._previous is not None and self._previous[0].shape == grey.shape:
        previous_grey, previous_in, previous_out = self._previous
        flow = self._flow.calc(grey, previous_grey, None)  # where each pixel was before
        height, width = grey.shape
        map_x = flow[..., 0] + np.arange(width, dtype=np.float32)[None]
        map_y = flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]
        warp = lambda image: cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE)
        mismatch = np.abs(frame.astype(np.float32) - warp(previous_in)).mean(axis=-1)
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        share = self.weight * np.exp(-(mismatch / self.tolerance) ** 2) * inside
        current = current + share[..., None] * (warp(previous_out) - current)
      self._previous = (grey, frame.astype(np.float32), current)
      blended.append(np.clip(np.round(current), 0, 255).astype(np.uint8))
    return np.stack(blended)
