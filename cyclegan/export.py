"""SavedModels for each direction, in TF Serving's `<base>/<version>/` layout.

python -m cyclegan.export --workdir workdirs/synthetic --export_dir saved_models/synthetic

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

import os

import tensorflow as tf
from absl import flags, logging

from cyclegan import cli
from cyclegan import images as images_lib
from cyclegan import models
from cyclegan import workdir as workdir_lib

DIRECTIONS = {"a2b": "generator_a2b", "b2a": "generator_b2a"}
# The signatures' names, for everything that calls them.
BYTES_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "translate_float"
UINT8_SIGNATURES = {"fp32": "translate_uint8", "bf16": "translate_uint8_bf16"}  # by precision
MIN_SIDE = 8  # Smallest side the generator's innermost reflect padding accepts (2 after /4).


def _reflect_indices(n, before, after):
  """Indices of a reflect-padded axis of length n, for any pad amount (also larger than n)."""
  positions = tf.range(-before, n + after)
  period = tf.maximum(2 * (n - 1), 1)
  folded = tf.math.floormod(positions, period)
  return tf.where(folded >= n, period - folded, folded)


def pad_to_multiple(images, multiple=4, min_side=MIN_SIDE):
  """Reflect-pads [N, H, W, C] so both sides are multiples of `multiple` and >= min_side."""
  shape = tf.shape(images)
  padded = []
  for axis, n in ((1, shape[1]), (2, shape[2])):
    target = tf.maximum((n + multiple - 1) // multiple * multiple, min_side)
    before = (target - n) // 2
    padded.append((axis, _reflect_indices(n, before, target - n - before), before))
  for axis, indices, _ in padded:
    images = tf.gather(images, indices, axis=axis)
  return images, padded[0][2], padded[1][2]


class ServingModule(tf.Module):
  """One direction's generator with serving signatures."""

  def __init__(self, generator):
    super().__init__(name="translator")
    self.generator_variables = [w.value for w in generator.weights]

    def translate(images):  # float32 [-1, 1], any size
      shape = tf.shape(images)
      padded, top, left = pad_to_multiple(images)
      out = tf.cast(generator(padded, training=False), tf.float32)
      return out[:, top:top + shape[1], left:left + shape[2], :]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, "images")])
    def translate_float(images):
      return {"images": translate(images)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")])
    def translate_uint8(images):
      return {"images": images_lib.to_uint8(translate(images_lib.to_unit_range(images)))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")])
    def serve_bytes(image_bytes):
      def one(encoded):
        image = images_lib.decode_rgb(encoded)  # Upright by its EXIF orientation.
        out = images_lib.to_uint8(translate(images_lib.to_unit_range(image[None])))[0]
        return tf.io.encode_png(out), tf.shape(out)[:2]
      png, size = tf.map_fn(one, image_bytes, fn_output_signature=(
          tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
      return {"translated_bytes": png, "translated_size": size}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")])
    def translate_uint8_bf16(images):
      return translate_uint8(images)

    self.translate_float = translate_float
    self.translate_uint8 = translate_uint8
    self.serve_bytes = serve_bytes
    with models.compute_dtype(generator, "mixed_bfloat16"):
      self.translate_uint8_bf16 = translate_uint8_bf16.get_concrete_function()

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
  """(SavedModel folder, version) for a base path (its highest version) or a version folder."""
  path = os.path.normpath(path)
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    name = os.path.basename(path)
    return path, int(name) if name.isdigit() else 1
  versions = find_versions(path)
  if not versions:
    raise FileNotFoundError(f"{path} is not an exported model (no saved_model.pb in it or in a "
                            "numbered version folder under it)")
  return os.path.join(path, str(versions[-1])), versions[-1]


def next_version(base):
  taken = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
  return max(taken, default=0) + 1


def save(generator, base, version=None):
  """Writes base/<version>/ atomically (TF Serving ignores the non-numeric temp name)."""
  version = version or next_version(base)
  path = os.path.join(base, str(version))
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists: pick another --version or remove it")
  tmp = os.path.join(base, f".tmp-{version}")
  module = ServingModule(generator)
  tf.saved_model.save(module, tmp, signatures=module.signatures())
  os.replace(tmp, path)
  return path


def _workdir_config(workdir):
  config = workdir_lib.load_config(workdir)
  if config is None:
    raise FileNotFoundError(f"{workdir_lib.config_path(workdir)} does not exist: not a training "
                            "workdir")
  return config


def restore_generators(workdir):
  """float32 generators with the latest checkpoint's weights; the training precision does not matter."""
  config = _workdir_config(workdir)
  checkpoint_path = workdir_lib.latest_checkpoint(workdir)
  if not checkpoint_path:
    raise FileNotFoundError(f"no checkpoint in {workdir_lib.checkpoint_dir(workdir)}: train first")
  generators = {name: models.resnet_generator(config.ngf, config.n_blocks, name=name)
                for name in DIRECTIONS.values()}
  status = tf.train.Checkpoint(**generators).restore(checkpoint_path).expect_partial()
  status.assert_existing_objects_matched()
  return generators, checkpoint_path


def export_from_workdir(workdir, export_dir, version=None):
  """Exports a2b and b2a from the workdir's latest checkpoint; returns {direction: path}."""
  generators, checkpoint_path = restore_generators(workdir)
  paths = {d: save(generators[g], os.path.join(export_dir, d), version)
           for d, g in DIRECTIONS.items()}
  logging.info("exported %s to %s", checkpoint_path, ", ".join(paths.values()))
  return paths


def usage(paths):
  """What to tell a person who just got these exports."""
  a2b = paths["a2b"]
  return "\n".join([
      f"SavedModels: {paths['a2b']} (A->B) and {paths['b2a']} (B->A)",
      f"  inspect:   saved_model_cli show --dir {a2b} --all",
      f"  in Python: m = tf.saved_model.load('{a2b}'); "
      "png = m.signatures['serving_default'](image_bytes=tf.constant([open('x.jpg','rb').read()]))"
      "['translated_bytes'][0]",
      f"  serve:     TF Serving with --model_base_path={os.path.abspath(os.path.dirname(a2b))}",
  ])


def define_flags():
  flags.DEFINE_string("workdir", None, "Training workdir with config.json and checkpoints/.",
                      required=True)
  flags.DEFINE_string("export_dir", None,
                      "Where to write a2b/ and b2a/ (default: saved_models/<name>).")
  flags.DEFINE_integer("version", None, "Version folder to write (default: the next free number).")


def main(argv):
  cli.no_arguments(argv)
  flags_ = flags.FLAGS
  try:
    export_dir = flags_.export_dir or _workdir_config(flags_.workdir).resolved_export_dir
    paths = export_from_workdir(flags_.workdir, export_dir, flags_.version)
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from None
  print(usage(paths))


if __name__ == "__main__":
  cli.run(main, define_flags)
