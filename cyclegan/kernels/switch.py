"""The one switch of every route: `auto` (where they pay) or `off` (oneDNN's kernels alone)."""

import contextlib

import tensorflow as tf

MODES = ("auto", "off")
_mode = "auto"


def configure(mode):
  """Process-wide, read when a graph is traced: call before building the step or the export.

  Process-wide rather than a context: tf.distribute traces each replica in a thread of its own.
  """
  global _mode
  if mode not in MODES:
    raise ValueError(f"cpu_kernels must be one of {MODES}, not {mode!r}")
  _mode = mode


@contextlib.contextmanager
def off():
  """Traces plain convolutions within the block (converters, tests), then restores the mode.

  Converters need it: they would fold Winograd's transformed kernels, 4x the weights, into
  their files.
  """
  global _mode
  saved, _mode = _mode, "off"
  try:
    yield
  finally:
    _mode = saved


def enabled():
  return _mode == "auto"


def on_cpu(layer):
  """What every CPU route needs: the switch on, the networks' kind of convolution ('valid'
  and undilated: they write their padding out), and no GPU (each route works around one of
  oneDNN's CPU kernels)."""
  return (enabled() and layer.padding == "valid" and tuple(layer.dilation_rate) == (1, 1) and
          not tf.config.list_physical_devices("GPU"))


def wide_3x3(layer, image_shape, dtype, min_side):
  """What both Winograd routes take, given the layer's input (height, width, channels): a
  3x3 stride-1 convolution in `dtype` with 128+ channels in and out on a CPU, unless a side
  is known to be under `min_side`."""
  height, width, channels = image_shape
  return (on_cpu(layer) and layer.compute_dtype == dtype and
          tuple(layer.kernel_size) == (3, 3) and tuple(layer.strides) == (1, 1) and
          channels is not None and channels >= 128 and layer.filters >= 128 and
          all(side is None or side >= min_side for side in (height, width)))
