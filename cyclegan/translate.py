"""Translate a file or a folder of images with an exported model.

  python -m cyclegan.translate --model saved_models/monet2photo/b2a --input photos/ --output out/

Outputs keep each input's relative path, stem and size. Unreadable files are skipped, listed at
the end, and make the exit status 1; usage errors exit with 2. Existing outputs are skipped
unless --overwrite, so re-running an interrupted command finishes the job. Images with more
than --tile^2 pixels are translated in tiles normalised with the whole image's instance-norm
statistics (tiling.py), so memory stays bounded and tile borders do not show.
"""

import collections
import concurrent.futures
import os
import sys

import numpy as np
import tensorflow as tf
import tqdm
from absl import flags, logging
from PIL import Image

from cyclegan import cli
from cyclegan import export
from cyclegan import images as images_lib
from cyclegan import tiling



def define_flags():
  """Flags are defined by the command only, so that other modules can import this one."""
  flags.DEFINE_string("model", None, "An exported direction: its base path "
                      "(saved_models/<name>/a2b: the highest version wins) or a version folder.")
  flags.DEFINE_string("input", None, "An image file, or a folder searched recursively.")
  flags.DEFINE_string("output", None, "Folder for the translated images (created if needed).")
  flags.DEFINE_enum("format", "auto", ["auto", *images_lib.FORMATS],
                    "Output format; auto: jpg for jpg inputs, png otherwise.")
  flags.DEFINE_integer("batch_size", 4, "Images of the same size translated together.")
  flags.DEFINE_integer("tile", 1024,
                       "Tile side for images with more than tile^2 pixels; 0: never tile. "
                       "Peak memory grows with it: 5.7 GB for a 6000x4000 photo at 1024 (fp32).")
  flags.DEFINE_integer("overlap", tiling.HALO, "Pixels of context each tile reads from its "
                       "neighbours on each side, cropped away after.")
  flags.DEFINE_integer("max_side", 0, "Resize so the longer side is at most this before the "
                       "model, and the result back to the input's size; 0: full resolution.")
  flags.DEFINE_enum("precision", "fp32", list(export.UINT8_SIGNATURES),
                    "Compute precision of the model.")
  flags.DEFINE_bool("overwrite", False, "Translate again even where the output exists.")
  flags.mark_flags_as_required(["model", "input", "output"])


FLAGS = flags.FLAGS


def resolve_model(path):
  """A SavedModel folder: `path` itself, or its highest numeric version subfolder."""
  try:
    return export.resolve_version(path)[0]
  except FileNotFoundError as e:
    raise cli.UserError(f"--model {e}") from None


def find_inputs(path):
  """[(file, path relative to the input root)] for every image-named file, sorted."""
  if os.path.isfile(path):
    return [(path, os.path.basename(path))]
  return [(full, os.path.relpath(full, path)) for full in images_lib.find_images(path)]


def output_path(output_dir, relative, fmt):
  return os.path.join(output_dir, os.path.splitext(relative)[0] + "." + fmt)


# --- The run ---------------------------------------------------------------------------------

Job = collections.namedtuple("Job", "source relative target fmt")


def progress_bar(total):
  """Count, images/s and ETA on stderr; on a terminal one updating line, else a line per 10 s."""
  return tqdm.tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10)


class TiledModel:
  """Runs the SavedModel on uint8 batches, whole or in tiles, with --max_side resizing."""

  def __init__(self, model_path, precision, tile, overlap, max_side):
    loaded = tf.saved_model.load(model_path)
    if export.UINT8_SIGNATURES[precision] not in loaded.signatures:
      raise cli.UserError(f"{model_path} has no {export.UINT8_SIGNATURES[precision]} signature: "
                       "use --precision fp32 or export it again with this version")
    self._loaded = loaded  # Keeps the variables alive.
    self._signature = loaded.signatures[export.UINT8_SIGNATURES[precision]]
    self._precision = precision
    self._shared_statistics = None  # Built on the first image that needs tiles.
    self.tile, self.overlap, self.max_side = tile, overlap, max_side

  def _run(self, batch):
    return self._signature(images=tf.constant(batch))["images"].numpy()

  def model_size(self, shape):
    """The size an image of `shape` goes through the model at (after --max_side)."""
    height, width = shape[:2]
    scale = min(1.0, self.max_side / max(height, width)) if self.max_side else 1.0
    return max(1, round(height * scale)), max(1, round(width * scale))

  def tiled(self, shape):
    height, width = self.model_size(shape)
    return bool(self.tile) and height * width > self.tile * self.tile

  def __call__(self, batch):
    """uint8 [N, H, W, 3] of one size -> the same shape, translated."""
    original = batch.shape[1:3]
    size = self.model_size(batch.shape[1:])
    if size != original:
      batch = _resize(batch, size)
    if self.tiled(batch.shape[1:]):
      if self._shared_statistics is None:
        self._shared_statistics = tiling.for_export(self._loaded, self._precision, self.tile,
                                                    self.overlap)
      out = np.stack([tiling.translate_uint8(self._shared_statistics, x) for x in batch])
    else:
      out = self._run(batch)
    return _resize(out, original) if size != original else out


def _resize(batch, size):
  return np.stack([np.asarray(Image.fromarray(x).resize(size[::-1], Image.BICUBIC)) for x in batch])


def translate_all(jobs, translator, batch_size, progress):
  """Decodes ahead and encodes behind on threads while the model runs; returns failures."""
  failures = []
  with concurrent.futures.ThreadPoolExecutor(2) as readers, \
      concurrent.futures.ThreadPoolExecutor(2) as writers:
    pending_reads = collections.deque()
    writes = []
    job_iter = iter(jobs)

    def refill():
      for job in job_iter:
        pending_reads.append((job, readers.submit(images_lib.read_image, job.source)))
        if len(pending_reads) >= 2 * batch_size + 2:
          break

    def flush(batch):
      if not batch:
        return
      outputs = translator(np.stack([rgb for _, rgb, _ in batch]))
      for (job, _, alpha), out in zip(batch, outputs):
        writes.append((job, writers.submit(images_lib.write_image, job.target, out, alpha, job.fmt)))
      progress.update(len(batch))
      batch.clear()

    batch = []
    refill()
    while pending_reads:
      job, future = pending_reads.popleft()
      refill()
      try:
        rgb, alpha = future.result()
      except images_lib.ImageReadError as e:
        failures.append((job.source, str(e)))
        logging.warning("skipping %s: %s", job.source, e)
        progress.update()
        continue
      if batch and (rgb.shape != batch[0][1].shape or translator.tiled(rgb.shape)):
        flush(batch)
      batch.append((job, rgb, alpha))
      if len(batch) >= batch_size or translator.tiled(rgb.shape):
        flush(batch)
    flush(batch)
    for job, future in writes:
      try:
        future.result()
      except OSError as e:
        failures.append((job.source, f"cannot write {job.target}: {e}"))
  return failures


def plan(input_path, output_dir, fmt, overwrite):
  """The jobs to run and how many outputs already exist."""
  if not os.path.exists(input_path):
    raise cli.UserError(f"--input {input_path} does not exist")
  in_root = os.path.realpath(input_path)
  out_root = os.path.realpath(output_dir)
  if os.path.isdir(in_root) and (out_root + os.sep).startswith(in_root + os.sep):
    raise cli.UserError(f"--output {output_dir} is inside --input {input_path}: choose a folder "
                     "outside it, so that inputs are never overwritten or re-read")
  jobs, existing = [], 0
  inputs = find_inputs(input_path)
  targets = collections.Counter(
      output_path(output_dir, r, images_lib.output_format(s, fmt)) for s, r in inputs)
  for source, relative in inputs:
    job_fmt = images_lib.output_format(source, fmt)
    target = output_path(output_dir, relative, job_fmt)
    if targets[target] > 1:  # photo.tif and photo.webp: keep both, as photo.tif.png etc.
      target = os.path.join(output_dir, f"{relative}.{job_fmt}")
    if os.path.realpath(target) == os.path.realpath(source):
      raise cli.UserError(f"{target} would overwrite its input: choose another --output")
    if os.path.exists(target) and not overwrite:
      existing += 1
      continue
    jobs.append(Job(source, relative, target, job_fmt))
  return jobs, existing


def main(argv):
  cli.no_arguments(argv)
  if FLAGS.batch_size < 1 or FLAGS.tile < 0 or FLAGS.overlap < 0 or FLAGS.max_side < 0:
    raise cli.UserError("--batch_size must be >= 1; --tile, --overlap and --max_side >= 0")
  if FLAGS.tile and FLAGS.overlap * 2 >= FLAGS.tile:
    raise cli.UserError(f"--overlap {FLAGS.overlap} must be less than half of --tile {FLAGS.tile}")
  jobs, existing = plan(FLAGS.input, FLAGS.output, FLAGS.format, FLAGS.overwrite)
  translator = TiledModel(resolve_model(FLAGS.model), FLAGS.precision, FLAGS.tile,
                          FLAGS.overlap, FLAGS.max_side)
  if existing:
    print(f"{existing} outputs exist already and are skipped (--overwrite to redo them)")
  with progress_bar(len(jobs)) as progress:
    failures = translate_all(jobs, translator, FLAGS.batch_size, progress)
  print(f"translated {len(jobs) - len(failures)} of {len(jobs)} images into {FLAGS.output}")
  if failures:
    print(f"{len(failures)} failed:")
    for source, reason in failures:
      print(f"  {source}: {reason}")
    return cli.SOME_FAILED
  return cli.OK


if __name__ == "__main__":
  cli.run(main, define_flags)
