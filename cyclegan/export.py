"""SavedModels for each direction, in TF Serving's `<base>/<version>/` layout, and portable files.

python -m cyclegan.export --workdir workdirs/synthetic --export_dir saved_models/synthetic
python -m cyclegan.export --model saved_models/synthetic/a2b --formats tflite,onnx

--formats writes TFLite and ONNX files beside the base folder (saved_models/synthetic/a2b.onnx),
where TF Serving does not look (see portable.py), and checks each one in its runtime.

Each export runs at any image size (reflect-padded to a multiple of 4, then cropped back) and has
three signatures:
  serving_default   image_bytes: string [None] (any encoded image) ->
                    translated_bytes: string [None] (PNG), translated_size: int32 [None, 2] (h, w)
  translate_uint8   images: uint8 [N, H, W, 3] -> images: uint8 [N, H, W, 3]
  translate_float   images: float32 [N, H, W, 3] in [-1, 1] -> images: float32 in [-1, 1]
  translate_uint8_bf16  as translate_uint8, computed in bfloat16 (about 2x faster on CPUs
                    with AVX512_BF16 and on recent GPUs; outputs within a few levels of fp32)
The generator's variables are tracked directly, not through the Keras model, so that the
C++ loader (TF Serving, saved_model_cli) finds them and each weight is stored once.
"""

import contextlib
import json
import os
import time

import tensorflow as tf
from absl import flags, logging

from cyclegan import any_size
from cyclegan import best_checkpoint
from cyclegan import cli
from cyclegan import cut_models
from cyclegan import files
from cyclegan import images as images_lib
from cyclegan import kernels
from cyclegan import models
from cyclegan import portable
from cyclegan import synthetic
from cyclegan import workdir as workdir_lib

DIRECTIONS = {"a2b": "generator_a2b", "b2a": "generator_b2a"}
# The signatures' names, for everything that calls them.
BYTES_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "translate_float"
UINT8_SIGNATURES = {"fp32": "translate_uint8", "bf16": "translate_uint8_bf16"}  # by precision


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


class ServingModule(tf.Module):
  """One direction's generator with serving signatures.

  The generator is traced twice (float32 and bfloat16, as float functions); the uint8 and
  bytes signatures call those traces instead of tracing it again, which halved the export's
  time. No AutoGraph: nothing here branches on tensors.
  """

  def __init__(self, generator):
    super().__init__(name="translator")
    self.generator_variables = [w.value for w in generator.weights]
    float_spec = tf.TensorSpec([None, None, None, 3], tf.float32, "images")
    uint8_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, "images")

    def float_translation():
      def translate_float(images):
        return {"images": any_size.translate(generator, images)}
      return tf.function(translate_float, input_signature=[float_spec],
                         autograph=False).get_concrete_function()

    def uint8_translation(translate_float):
      def translate_uint8(images):
        return {"images": images_lib.through_unit_range(
            lambda x: translate_float(x)["images"], images)}
      return tf.function(translate_uint8, input_signature=[uint8_spec],
                         autograph=False).get_concrete_function()

    self.translate_float = float_translation()
    self.translate_uint8 = uint8_translation(self.translate_float)
    with compute_dtype(generator, "mixed_bfloat16"):
      self.translate_uint8_bf16 = uint8_translation(float_translation())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")],
                 autograph=False)
    def serve_bytes(image_bytes):
      def one(encoded):
        image = images_lib.decode_rgb(encoded)  # Upright by its EXIF orientation.
        out = self.translate_uint8(image[None])["images"][0]
        return tf.io.encode_png(out), tf.shape(out)[:2]
      png, size = tf.map_fn(one, image_bytes, fn_output_signature=(
          tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
      return {"translated_bytes": png, "translated_size": size}
    self.serve_bytes = serve_bytes

  def signatures(self):
    return {BYTES_SIGNATURE: self.serve_bytes, FLOAT_SIGNATURE: self.translate_float,
            UINT8_SIGNATURES["fp32"]: self.translate_uint8,
            UINT8_SIGNATURES["bf16"]: self.translate_uint8_bf16}


def find_versions(base):
  """Numeric version folders of a model base path that hold a SavedModel, lowest first."""
  if not os.path.isdir(base):
    return []
  return sorted(int(d) for d in os.listdir(base)
                if d.isdigit() and os.path.isfile(os.path.join(base, d, "saved_model.pb")))


def resolve_version(path):
  """(SavedModel folder, version) for a base path (its highest version) or a version folder;
  where no such path exists, a published model's name (fetched into the cache first)."""
  if not os.path.exists(path) and os.sep not in path:
    from cyclegan import pretrained  # pylint: disable=import-outside-toplevel  (it imports this)
    if path in pretrained.PUBLISHED:
      path = pretrained.ensure(path)
    else:
      raise FileNotFoundError(f"{path} is neither a folder nor a published model "
                              f"({pretrained.names_line()})")
  path = os.path.normpath(path)
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    name = os.path.basename(path)
    return path, int(name) if name.isdigit() else 1
  versions = find_versions(path)
  folder, name = os.path.split(path)
  if not versions and name == "b2a" and find_versions(os.path.join(folder, "a2b")):
    raise FileNotFoundError(f"{path} does not exist: {folder} has a2b alone, as a run of "
                            "--model cut or fastcut exports (they translate A->B only)")
  if not versions:
    raise FileNotFoundError(f"{path} is not an exported model (no saved_model.pb in it or in a "
                            "numbered version folder under it)")
  return os.path.join(path, str(versions[-1])), versions[-1]


def next_version(base):
  taken = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
  return max(taken, default=0) + 1


def save(generator, base, version=None, metrics=None):
  """Writes base/<version>/ atomically (TF Serving ignores the non-numeric temp name), with
  `metrics` (a dict) as metrics.json beside the SavedModel."""
  version = version or next_version(base)
  path = os.path.join(base, str(version))
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists: pick another --version or remove it")
  module = ServingModule(generator)
  with files.atomic_path(path) as temporary:
    tf.saved_model.save(module, temporary, signatures=module.signatures())
    if metrics is not None:
      with open(os.path.join(temporary, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
  return path


def generator_of(loaded, dtype="float32"):
  """A Keras generator (dtype: its policy) with the weights of a loaded export.

  Rebuilt by the current code from the stored variables (in `generator.weights` order), so
  conversions get today's graph whatever version of this project wrote the SavedModel.
  """
  weights = list(getattr(loaded, "generator_variables", []))
  n_blocks, extra = divmod(len(weights) - 12, 4)  # stem 2, down 4, up 4, head 2; 4 per block
  if not weights or extra or n_blocks < 1 or len(weights[0].shape) != 4:
    raise ValueError("not a cyclegan export: its variables do not form a generator")
  up0 = weights[6 + 4 * n_blocks].shape  # a transposed kernel is (h, w, out, in)
  build = cut_models.cut_generator if up0[2] > up0[3] else models.resnet_generator
  generator = build(weights[0].shape[-1], n_blocks, dtype=dtype)
  generator.set_weights([w.numpy() for w in weights])
  return generator


def signatures(loaded, cpu_kernels):
  """{name: function} to run a loaded export by, with --cpu_kernels: auto, its saved graphs
  as they are; off, its weights traced again here without the CPU routes (kernels.off), under
  the same names."""
  if cpu_kernels == "auto":
    return dict(loaded.signatures)
  with kernels.off():
    traced = ServingModule(generator_of(loaded)).signatures()
  return {name: fn for name, fn in traced.items() if name in loaded.signatures}


def _workdir_config(workdir):
  config = workdir_lib.load_config(workdir)
  if config is None:
    raise FileNotFoundError(f"{workdir_lib.config_path(workdir)} does not exist: not a training "
                            "workdir")
  return config


def directions(config):
  """{direction: generator name} a run of `config` trains: CUT's A->B alone."""
  return DIRECTIONS if config.model == "cycle_gan" else {"a2b": DIRECTIONS["a2b"]}


def _checkpoint_to_restore(workdir, which, direction):
  """(checkpoint path, or None for the newest readable one; which it is: best, latest or the
  step; what it is, in words) for --checkpoint."""
  if which == "best":
    record = best_checkpoint.read(workdir).get(direction)
    if record:
      return (best_checkpoint.checkpoint_path(workdir, direction), "best",
              f"the best by held-out {record['metric']} ({record['value']:.4g})")
    logging.info("no best %s checkpoint in %s (no held-out evaluation has run): exporting the "
                 "latest", direction, workdir)
    return None, "latest", "the latest"
  if which == "latest":
    return None, "latest", "the latest"
  if not str(which).isdigit():
    raise ValueError(f"--checkpoint takes best, latest or a step number, got {which!r}")
  kept = {workdir_lib.checkpoint_step(p): p for p in workdir_lib.checkpoints(workdir)}
  for record in best_checkpoint.read(workdir).values():
    kept.setdefault(record["step"],
                    os.path.join(best_checkpoint.folder(workdir), record["checkpoint"]))
  if int(which) not in kept:
    raise ValueError(f"{workdir} has no checkpoint of step {which}; it has steps "
                     f"{', '.join(map(str, sorted(kept))) or 'none'}")
  return kept[int(which)], str(which), f"step {which}"


def restore_generators(workdir, which="latest"):
  """float32 generators and, for each, (the checkpoint it was restored from, what that is):
  `which` is best (each direction's own), latest (the newest readable) or a step. The
  training precision does not matter."""
  config = _workdir_config(workdir)
  build = (models.resnet_generator if config.model == "cycle_gan" else
           cut_models.networks(config.antialias)[0])
  generators, sources = {}, {}
  for direction, name in directions(config).items():
    generators[name] = build(config.ngf, config.n_blocks, name=name)
    checkpoint = tf.train.Checkpoint(**{name: generators[name]})
    restore = lambda path: (checkpoint.restore(path).expect_partial()
                            .assert_existing_objects_matched())
    path, chosen, what = _checkpoint_to_restore(workdir, which, direction)
    if path:
      try:
        restore(path)
      except workdir_lib.UNREADABLE as e:
        raise ValueError(f"checkpoint {path} ({what}) is unreadable "
                         f"({str(e).strip().splitlines()[0][:160]}): export another with "
                         "--checkpoint latest or a step") from None
    else:
      path = workdir_lib.restore_newest(workdir, restore, move_aside=False)
    if not path:
      raise FileNotFoundError(f"no checkpoint in {workdir_lib.checkpoint_dir(workdir)}: train "
                              "first")
    sources[name] = path, chosen, what
  return generators, sources


def _metrics_record(workdir, checkpoint_path, chosen, direction):
  """What metrics.json says of an export: its step, which checkpoint, and the held-out
  evaluation of that step where there was one."""
  step = workdir_lib.checkpoint_step(checkpoint_path)
  evaluated = {r["step"]: r["metrics"] for r in workdir_lib.read_evaluations(workdir)}
  best = best_checkpoint.read(workdir).get(direction)
  return {"direction": direction, "step": step, "checkpoint": chosen,
          "checkpoint_path": os.path.relpath(checkpoint_path, workdir),
          "workdir": os.path.abspath(workdir),
          "best_metric": best["metric"] if best else None,
          "is_best": bool(best) and best["step"] == step,
          "metrics": evaluated.get(step) or (best["metrics"] if best and best["step"] == step
                                             else {})}


def export_from_workdir(workdir, export_dir, version=None, which="latest"):
  """Exports a2b and b2a (CUT: a2b) from a checkpoint (`which`: best, latest or a step), each
  version with a metrics.json; returns {direction: path}."""
  generators, sources = restore_generators(workdir, which)
  paths = {}
  for direction, name in DIRECTIONS.items():
    if name not in generators:
      continue
    path, chosen, what = sources[name]
    record = _metrics_record(workdir, path, chosen, direction)
    paths[direction] = save(generators[name], os.path.join(export_dir, direction), version,
                            record)
    logging.info("exported %s: step %d, %s (%s), to %s", direction, record["step"], what, path,
                 paths[direction])
  return paths


def usage(paths):
  """What to tell a person who just got these exports."""
  a2b = paths["a2b"]
  saved = (f"SavedModels: {a2b} (A->B) and {paths['b2a']} (B->A)" if "b2a" in paths else
           f"SavedModel: {a2b} (A->B; CUT models translate one way)")
  return "\n".join([
      saved,
      f"  inspect:   saved_model_cli show --dir {a2b} --all",
      f"  in Python: m = tf.saved_model.load('{a2b}'); "
      "png = m.signatures['serving_default'](image_bytes=tf.constant([open('x.jpg','rb').read()]))"
      "['translated_bytes'][0]",
      f"  serve:     TF Serving with --model_base_path={os.path.abspath(os.path.dirname(a2b))}",
      f"  TFLite, ONNX: python -m cyclegan.export --model {os.path.dirname(a2b)} --formats",
  ])


# Least PSNR (dB) against the SavedModel on the check image before the command warns: fp32 files
# agree to rounding (measured >= 79 dB), fp16 >= 57 dB, int8 30-50 dB (docs/performance.md).
EXPECTED_PSNR = {"tflite": 45, "tflite_fp16": 40, "tflite_int8": 30, "onnx": 45}


def model_base(saved_model):
  """The folder the files go beside: the base of a <base>/<version>/ layout, else the model."""
  saved_model = os.path.normpath(saved_model)
  return os.path.dirname(saved_model) if os.path.basename(saved_model).isdigit() else saved_model


def check_image(size=None):
  """A built-in scene at an odd size (67x93) or the fixed one, to compare files with the export."""
  height, width = size or (67, 93)
  return synthetic.warm_scenes(1, max(height, width), seed=0)[:, :height, :width]


def write_formats(model_path, formats, size=None):
  """Converts one export to each format, beside its base folder; prints a line per file."""
  try:
    saved_model = resolve_version(model_path)[0]
    loaded = tf.saved_model.load(saved_model)
    generator = generator_of(loaded)
  except (OSError, ValueError) as e:
    raise cli.UserError(f"--model {model_path}: {e}") from None
  image = check_image(size)
  reference = loaded.signatures[UINT8_SIGNATURES["fp32"]](images=tf.constant(image))
  paths = []
  for fmt in formats:
    start = time.perf_counter()
    data = portable.convert(generator, fmt, size)
    path = portable.write(data, portable.file_path(model_base(saved_model), fmt, size))
    seconds = time.perf_counter() - start
    check = portable.compare(reference["images"].numpy(), portable.runner(path)(image))
    line = (f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB, converted in {seconds:.0f} s; "
            f"against the SavedModel on a {image.shape[1]}x{image.shape[2]} image: {check}")
    if check.psnr < EXPECTED_PSNR[fmt]:
      line += f" (warning: below the {EXPECTED_PSNR[fmt]} dB this format usually reaches)"
    print(line, flush=True)
    paths.append(path)
  return paths


def define_flags():
  flags.DEFINE_string("workdir", None, "Training workdir with config.json and checkpoints/: "
                      "exports a2b/ and b2a/ SavedModels from one of its checkpoints "
                      "(--checkpoint).")
  flags.DEFINE_string("model", None, "Instead of --workdir: an existing export (its base path, "
                      "saved_models/<name>/a2b, a version folder, or a published model's "
                      "name) to convert to --formats (default all).")
  flags.DEFINE_string("export_dir", None,
                      "Where to write a2b/ and b2a/ (default: saved_models/<name>).")
  flags.DEFINE_integer("version", None, "Version folder to write (default: the next free number).")
  flags.DEFINE_string("checkpoint", "best", "With --workdir, which checkpoint: best (by held-out "
                      "evaluation; the latest where none ran), latest, or a step number.")
  flags.DEFINE_enum("cpu_kernels", "auto", list(kernels.MODES),
                    "CPU convolution routes (cyclegan/kernels/) in the SavedModels' graphs: "
                    "auto takes them where they pay, when exporting on a machine without a "
                    "GPU; off traces plain convolutions (oneDNN's). --formats files never have "
                    "them.")
  portable.define_flags()


def main(argv):
  cli.no_arguments(argv)
  flags_ = flags.FLAGS
  if bool(flags_.workdir) == bool(flags_.model):
    raise cli.UserError("give --workdir (export a training run) or --model (convert an export "
                        "to --formats), not both")
  formats, size = portable.from_flags(default="all" if flags_.model else None)
  kernels.configure(flags_.cpu_kernels)
  if flags_.model:
    write_formats(flags_.model, formats, size)
    return
  try:
    export_dir = flags_.export_dir or _workdir_config(flags_.workdir).resolved_export_dir
    paths = export_from_workdir(flags_.workdir, export_dir, flags_.version, flags_.checkpoint)
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from None
  print(usage(paths))
  for path in paths.values() if formats else ():
    write_formats(path, formats, size)


if __name__ == "__main__":
  cli.run(main, define_flags, bare_values={"formats": "all"})
