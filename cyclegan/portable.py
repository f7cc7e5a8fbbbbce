"""TFLite and ONNX files of an export, for phones and runtimes other than TensorFlow.

Every file keeps the uint8 contract of `translate_uint8`: input "images" uint8 RGB [1, H, W, 3],
output "translated" uint8 RGB [1, H, W, 3], with H and W free (ONNX dynamic axes; TFLite
`resize_tensor_input`) unless a fixed size is asked for. Odd sizes are padded and cropped back
inside the model, as in the SavedModel. The converters come with the `[export]` extra.
"""

import contextlib
import dataclasses
import importlib.util
import logging
import os

import numpy as np
import tensorflow as tf
from absl import flags
from absl import logging as absl_logging

from cyclegan import any_size
from cyclegan import cli
from cyclegan import files
from cyclegan import kernels
from cyclegan import quiet

# --formats name -> what ends the file name, after the model's base folder.
SUFFIXES = {"tflite": "_fp32.tflite", "tflite_fp16": "_fp16.tflite",
            "tflite_int8": "_int8.tflite", "onnx": ".onnx"}
INPUT_NAME, OUTPUT_NAME = "images", "translated"
SIGNATURE = "serving_default"  # The TFLite file's one signature (the converter's name for it).
ONNX_OPSET = 17
# What converting to, and checking, each kind of file imports (all in the [export] extra).
NEEDS = {"tflite": ("ai_edge_litert",), "onnx": ("tf2onnx", "onnxruntime")}


def parse_formats(text):
  """`--formats` value -> format names in a fixed order; None is none, empty or "all" every one."""
  if text is None:
    return []
  names = [n.strip() for n in text.split(",") if n.strip()]
  if not names or names == ["all"]:
    return list(SUFFIXES)
  unknown = [n for n in names if n not in SUFFIXES]
  if unknown:
    raise cli.UserError(f"--formats: unknown {', '.join(unknown)}; choose from "
                        f"{', '.join(SUFFIXES)} (or all)")
  return [n for n in SUFFIXES if n in names]


def check_installed(formats):
  """One line naming the missing packages, before any slow work starts."""
  needed = {m for f in formats for m in NEEDS[f.split("_")[0]]}
  missing = sorted(m for m in needed if importlib.util.find_spec(m) is None)
  if missing:
    raise cli.UserError(f"--formats {','.join(formats)} needs {', '.join(missing)}: "
                        "pip install 'cyclegan[export]' (or \".[export]\" in a checkout)")


def parse_size(values):
  """`--size` (H or H,W) -> (H, W), or None for free sizes."""
  if not values:
    return None
  try:
    size = tuple(int(v) for v in values)
  except ValueError:
    size = ()
  if len(size) == 1:
    size *= 2
  if len(size) != 2 or min(size) < any_size.MIN_SIDE:
    raise cli.UserError(f"--size: give H or H,W, each at least {any_size.MIN_SIDE} (got "
                        f"{','.join(values)})")
  return size


def file_path(model_base, fmt, size=None):
  """saved_models/x/a2b + tflite_fp16 -> saved_models/x/a2b_fp16.tflite (beside, not inside)."""
  stem, ext = SUFFIXES[fmt].rsplit(".", 1)
  fixed = f"_{size[0]}x{size[1]}" if size else ""
  return f"{os.path.normpath(model_base)}{stem}{fixed}.{ext}"


def _uint8_function(generator, size):
  shape = [1, *(size or (None, None)), 3]

  @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8, INPUT_NAME)])
  def translate(images):
    return {OUTPUT_NAME: any_size.translate_uint8(generator, images)}
  return translate


def to_tflite(generator, fmt, size=None):
  """The .tflite file's bytes.

  int8 is dynamic-range (int8 weights, activations quantized per image at run time): full-integer
  with ranges calibrated on training images fell to 14-29 dB PSNR against fp32, because instance
  norm's statistics change from image to image and static ranges cannot follow them.
  """
  module = tf.Module()
  module.generator_variables = [w.value for w in generator.weights]  # tf.Variables, to freeze
  function = _uint8_function(generator, size).get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
  if fmt == "tflite_fp16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif fmt == "tflite_int8":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def to_onnx(generator, size=None):
  """The .onnx file's bytes (ONNX opset ONNX_OPSET)."""
  import tf2onnx  # pylint: disable=import-outside-toplevel  (the [export] extra)
  function = _uint8_function(generator, size)
  proto, _ = tf2onnx.convert.from_function(
      function, input_signature=function.input_signature, opset=ONNX_OPSET)
  return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_converters():
  """The converters log each step at INFO; a person wants one line per file."""
  loggers = [logging.getLogger(name) for name in ("tensorflow", "tf2onnx")]
  levels = [logger.level for logger in loggers]
  verbosity = absl_logging.get_verbosity()
  for logger in loggers:
    logger.setLevel(logging.WARNING)
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def convert(generator, fmt, size=None):
  with _quiet_converters(), kernels.off():
    return to_onnx(generator, size) if fmt == "onnx" else to_tflite(generator, fmt, size)


class TFLiteRunner:
  """A .tflite file in LiteRT's interpreter: uint8 [1, H, W, 3] -> uint8 [1, H, W, 3].

  threads: default every core (LiteRT's own default is one thread).
  """

  def __init__(self, path, threads=None):
    from ai_edge_litert import interpreter  # pylint: disable=import-outside-toplevel
    self._interpreter = interpreter.Interpreter(model_path=path,
                                                num_threads=threads or os.cpu_count())
    self._runner = self._interpreter.get_signature_runner(SIGNATURE)
    self._called = False

  def __call__(self, images):
    # LiteRT applies its delegate, and says so, at the first call.
    with contextlib.nullcontext() if self._called else quiet.litert_notices_hidden():
      self._called = True
      return self._runner(**{INPUT_NAME: images})[OUTPUT_NAME]


class OnnxRunner:
  """An .onnx file in ONNX Runtime (CPU): uint8 [1, H, W, 3] -> uint8 [1, H, W, 3]."""

  def __init__(self, path, threads=None):
    import onnxruntime  # pylint: disable=import-outside-toplevel
    options = onnxruntime.SessionOptions()
    if threads:
      options.intra_op_num_threads = threads
    self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

  def __call__(self, images):
    return self._session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def runner(path, threads=None):
  return OnnxRunner(path, threads) if path.endswith(".onnx") else TFLiteRunner(path, threads)


@dataclasses.dataclass
class Check:
  """How far a file's output is from the SavedModel's on one image (grey levels, dB)."""
  max_diff: int
  mean_diff: float
  psnr: float

  def __str__(self):
    return f"max {self.max_diff}, mean {self.mean_diff:.3f} levels, PSNR {self.psnr:.1f} dB"


def compare(reference, output):
  diff = np.abs(reference.astype(np.int32) - output.astype(np.int32))
  mse = float(np.mean(diff.astype(np.float64) ** 2))
  psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
  return Check(int(diff.max()), float(diff.mean()), psnr)


def write(data, path):
  """Atomically: an interrupted export leaves no half file under the final name."""
  with files.atomic_open(path, "wb") as f:
    f.write(data)
  return path


def define_flags():
  """--formats and --size, for every command that writes exports."""
  flags.DEFINE_string(
      "formats", None, "Also write portable files beside each export, comma-separated: "
      f"{', '.join(SUFFIXES)}, or all (a bare --formats is all). Needs the [export] extra.")
  flags.DEFINE_list("size", None, "Fixed input size H or H,W for --formats files (default: any "
                    "size, set at run time); the file names then end in _HxW.")


def from_flags(default=None):
  """(formats, size) from --formats and --size, checked before any slow work starts."""
  formats = parse_formats(default if flags.FLAGS.formats is None else flags.FLAGS.formats)
  size = parse_size(flags.FLAGS.size)
  if size and not formats:
    raise cli.UserError("--size sets the input size of --formats files: give --formats too")
  check_installed(formats)
  return formats, size
