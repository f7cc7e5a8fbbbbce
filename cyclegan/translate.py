"""Translate a file or a folder of images and videos with an exported model.

  python -m cyclegan.translate --model saved_models/monet2photo/b2a --input photos/ --output out/

Outputs keep each input's relative path, stem and size; videos (mp4, mov, mkv, webm, avi,
animated GIF/WebP) keep their container, frames, timing and audio (video.py), with colours
steadied over each shot (temporal.py). Unreadable files are skipped, listed at
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
from absl import flags, logging
from PIL import Image

from cyclegan import cli
from cyclegan import export
from cyclegan import images as images_lib
from cyclegan import kernels
from cyclegan import models
from cyclegan import runtime
from cyclegan import temporal
from cyclegan import tiling
from cyclegan import video



def define_flags():
  """Flags are defined by the command only, so that other modules can import this one."""
  flags.DEFINE_string("model", None, "An exported direction: its base path "
                      "(saved_models/<name>/a2b: the highest version wins), a version folder, "
                      "or a published model's name (python -m cyclegan.pretrained list).")
  flags.DEFINE_string("input", None, "An image file, or a folder searched recursively.")
  flags.DEFINE_string("output", None, "Folder for the translated images (created if needed).")
  flags.DEFINE_enum("format", "auto", ["auto", *images_lib.FORMATS],
                    "Output format; auto: jpg for jpg inputs, png otherwise.")
  flags.DEFINE_integer("batch_size", 4, "Images of the same size translated together.")
  flags.DEFINE_float("memory_budget", None, "Peak memory to stay within, in GB: images too "
                     "large for it are translated in tiles (whole-image statistics, no seams). "
                     "Default: %.1f, or half the available memory if less." % (
                         tiling.DEFAULT_BUDGET / 1e9))
  flags.DEFINE_integer("tile", None, "Tile side instead of one from --memory_budget: images of "
                       "more than tile^2 pixels are tiled; 0: never tile.")
  flags.DEFINE_integer("overlap", tiling.HALO, "Pixels of context each tile reads from its "
                       "neighbours on each side, cropped away after.")
  flags.DEFINE_integer("max_side", 0, "Resize so the longer side is at most this before the "
                       "model, and the result back to the input's size; 0: full resolution.")
  runtime.define_inference_flags()
  flags.DEFINE_bool("overwrite", False, "Translate again even where the output exists.")
  flags.DEFINE_integer("video_quality", video.DEFAULT_QUALITY, "Videos' constant quality "
                       "(x264/VP9 CRF): 0 lossless, 23 x264's default, 51 worst.")
  flags.DEFINE_bool("stabilize", True, "Videos: steady colours over each shot (cuts "
                    "detected): instance-norm statistics averaged over its frames, and each "
                    "output blended with the previous one along the optical flow; "
                    "--nostabilize: each frame on its own, as an image.")
  flags.mark_flags_as_required(["model", "input", "output"])


FLAGS = flags.FLAGS


def resolve_model(path):
  """A SavedModel folder: `path` itself, or its highest numeric version subfolder."""
  try:
    return export.resolve_version(path)[0]
  except FileNotFoundError as e:
    raise cli.UserError(f"--model {e}") from None


def find_inputs(path):
  """[(file, path relative to the input root)] for every image- or video-named file, sorted."""
  if os.path.isfile(path):
    return [(path, os.path.basename(path))]
  return [(full, os.path.relpath(full, path)) for full in images_lib.find_images(
      path, images_lib.EXTENSIONS + video.VIDEO_EXTENSIONS)]


def output_path(output_dir, relative, fmt):
  return os.path.join(output_dir, os.path.splitext(relative)[0] + "." + fmt)


# --- The run ---------------------------------------------------------------------------------

Job = collections.namedtuple("Job", "source relative target fmt")  # fmt None: a video


# Images of at least this many pixels run one per call on a CPU (TiledModel._run).
CPU_SINGLE_CALL_PIXELS = 256 * 256


class TiledModel:
  """Runs the SavedModel on uint8 batches, whole or in tiles, with --max_side resizing.

  tile None: tiles and batches follow `memory_budget` (bytes; None: tiling.default_budget()).
  precision: auto, fp32 or bf16 (runtime.inference_precision). cpu_kernels: the graph whole
  images run through (export.signatures); tiles and videos trace as kernels.configure says.
  """

  def __init__(self, model_path, precision, tile, overlap, max_side, memory_budget=None,
               cpu_kernels="auto"):
    loaded = tf.saved_model.load(model_path)
    precision = runtime.inference_precision(precision, loaded.signatures)
    if export.UINT8_SIGNATURES[precision] not in loaded.signatures:
      raise cli.UserError(f"{model_path} has no {export.UINT8_SIGNATURES[precision]} signature: "
                       "use --precision fp32 or export it again with this version")
    self._loaded = loaded  # Keeps the variables alive.
    self._signature = export.signatures(loaded, cpu_kernels)[export.UINT8_SIGNATURES[precision]]
    self._precision = precision
    self._generator = None  # Keras, for tiles and videos: built when first needed.
    self._shared_statistics = None
    self._stable_statistics = None
    self.tile, self.overlap, self.max_side = tile, overlap, max_side
    self.budget = None if tile is not None else tiling.MemoryBudget(
        memory_budget or tiling.default_budget(), loaded.generator_variables[0].shape[-1],
        precision)

  def _run(self, batch):
    """On a CPU, images of CPU_SINGLE_CALL_PIXELS or more one call each: the signature's batch
    is unknown when traced, so its instance norms move a batch of several through transposes.
    CPU time per image, a batch of four against four single calls (2-core EPYC, fp32 and
    bf16): 512 px 9-11% more, 384 px 5-11% more, 256 px the same; 128 px 19-23% less and
    32 px 60% less, where each call's own overhead dominates. GPUs gain from the batch."""
    if (len(batch) == 1 or batch.shape[1] * batch.shape[2] < CPU_SINGLE_CALL_PIXELS or
        tf.config.list_physical_devices("GPU")):
      return self._signature(images=tf.constant(batch))["images"].numpy()
    return np.concatenate([self._run(batch[i:i + 1]) for i in range(len(batch))])

  def model_size(self, shape):
    """The size an image of `shape` goes through the model at (after --max_side)."""
    height, width = shape[:2]
    scale = min(1.0, self.max_side / max(height, width)) if self.max_side else 1.0
    return max(1, round(height * scale)), max(1, round(width * scale))

  def call_pixels(self, shape):
    """The most pixels one model call may take for an image of `shape`."""
    height, width = self.model_size(shape)
    if self.budget:
      return self.budget.call_pixels(height * width)
    return self.tile ** 2 if self.tile else sys.maxsize

  def tiled(self, shape):
    height, width = self.model_size(shape)
    return height * width > self.call_pixels(shape)

  def batch_limit(self, shape):
    """Images of `shape` one call may take together."""
    height, width = self.model_size(shape)
    return max(1, int(self.call_pixels(shape) // (height * width)))

  def __call__(self, batch):
    """uint8 [N, H, W, 3] of one size -> the same shape, translated."""
    return self._at_model_size(batch, self._run, lambda _, x, *tiling_args: self._tiles()(
        x, *tiling_args))

  def _at_model_size(self, batch, whole, tiled):
    """whole(batch), or tiled(i, image, tile, stats_pixels) for each image too large for one
    call, with --max_side resizing around them."""
    original = batch.shape[1:3]
    size = self.model_size(batch.shape[1:])
    if size != original:
      batch = _resize(batch, size)
    if self.tiled(batch.shape[1:]):
      out = np.stack([tiled(i, x, *self._tiling(x.shape)) for i, x in enumerate(batch)])
    else:
      out = whole(batch)
    return _resize(out, original) if size != original else out

  def generator(self):
    if self._generator is None:
      self._generator = export.generator_of(self._loaded, models.POLICIES[self._precision])
    return self._generator

  def _tiles(self):
    if self._shared_statistics is None:
      self._shared_statistics = tiling.SharedStatistics(self.generator(), self.overlap)
    return self._shared_statistics

  def _tiling(self, shape):
    """(tile, stats_pixels) for an image of `shape` (at model size)."""
    if not self.budget:
      return self.tile, None
    pixels = shape[0] * shape[1]
    return self.budget.tile(pixels, self.overlap), self.budget.call_pixels(pixels)

  def video_frames(self, stabilize):
    """translate_batch for one video's frames, in order: steadied over shots, or as images."""
    if not stabilize:
      return self
    if self._stable_statistics is None:
      self._stable_statistics = temporal.StableStatistics(self.generator())
    stable, shots, flow = self._stable_statistics, temporal.ShotDetector(), temporal.FlowBlending()
    stable.reset()

    def translate_frames(frames):
      starts = [shots.starts_shot(f) for f in frames]
      out = self._at_model_size(
          frames, lambda batch: stable(batch, starts),
          lambda i, frame, *tiling_args: stable.tiled(frame, starts[i], self._tiles(),
                                                      *tiling_args))
      return flow(frames, out, starts)
    return translate_frames


def _resize(batch, size):
  return np.stack([np.asarray(Image.fromarray(x).resize(size[::-1], Image.BICUBIC)) for x in batch])


def translate_all(jobs, translator, batch_size, progress):
  """Decodes ahead and encodes behind on threads while the model runs; returns failures.

  Images that need tiles are read and written one at a time, with nothing read ahead of them,
  so that memory stays within the translator's budget.
  """
  failures = []
  with concurrent.futures.ThreadPoolExecutor(2) as readers, \
      concurrent.futures.ThreadPoolExecutor(2) as writers:
    pending_reads = collections.deque()  # (job, large, future)
    writes = []
    waiting = collections.deque(jobs)

    def refill():
      while waiting and len(pending_reads) < 2 * batch_size + 2:
        if pending_reads and pending_reads[-1][1]:
          return
        large = translator.tiled(images_lib.header_shape(waiting[0].source))
        if large and pending_reads:
          return
        job = waiting.popleft()
        pending_reads.append((job, large, readers.submit(images_lib.read_image, job.source)))

    def flush(batch):
      if not batch:
        return
      outputs = translator(np.stack([rgb for _, rgb, _ in batch]))
      for (job, _, alpha), out in zip(batch, outputs):
        writes.append((job, writers.submit(images_lib.write_image, job.target, out, alpha, job.fmt)))
      if translator.tiled(outputs.shape[1:]):
        concurrent.futures.wait([writes[-1][1]])
      progress.update(len(batch))
      batch.clear()

    batch = []
    refill()
    while pending_reads:
      job, _, future = pending_reads.popleft()
      try:
        rgb, alpha = future.result()
      except images_lib.ImageReadError as e:
        failures.append((job.source, str(e)))
        logging.warning("skipping %s: %s", job.source, e)
        progress.update()
        refill()
        continue
      if batch and rgb.shape != batch[0][1].shape:
        flush(batch)
      batch.append((job, rgb, alpha))
      if len(batch) >= min(batch_size, translator.batch_limit(rgb.shape)):  # 1 if tiled
        flush(batch)
      refill()
    flush(batch)
    for job, future in writes:
      try:
        future.result()
      except OSError as e:
        failures.append((job.source, f"cannot write {job.target}: {e}"))
  return failures


def translate_video(job, translator, batch_size, quality, stabilize):
  """One video, with a progress bar of its frames; returns its failure, if any, as a list."""
  frames, shape = video.probe(job.source)
  batch = min(batch_size, translator.batch_limit(shape)) if shape else 1
  with cli.progress_bar(frames or None, "frame", job.relative) as progress:
    try:
      video.translate(job.source, job.target, translator.video_frames(stabilize), batch,
                      quality, progress)
    except video.VideoError as e:
      logging.warning("skipping %s: %s", job.source, e)
      return [(job.source, str(e))]
  return []


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
    if video.is_video_name(source) or video.is_animation(source):
      target = os.path.join(output_dir, relative)
      if os.path.exists(target) and not overwrite:
        existing += 1
      else:
        jobs.append(Job(source, relative, target, None))
      continue
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
  if FLAGS.batch_size < 1 or (FLAGS.tile or 0) < 0 or FLAGS.overlap < 0 or FLAGS.max_side < 0:
    raise cli.UserError("--batch_size must be >= 1; --tile, --overlap and --max_side >= 0")
  if FLAGS.memory_budget is not None and FLAGS.memory_budget <= 0:
    raise cli.UserError(f"--memory_budget {FLAGS.memory_budget} must be positive (GB)")
  if FLAGS.tile and FLAGS.overlap * 2 >= FLAGS.tile:
    raise cli.UserError(f"--overlap {FLAGS.overlap} must be less than half of --tile {FLAGS.tile}")
  jobs, existing = plan(FLAGS.input, FLAGS.output, FLAGS.format, FLAGS.overwrite)
  kernels.configure(FLAGS.cpu_kernels)
  translator = TiledModel(resolve_model(FLAGS.model), FLAGS.precision, FLAGS.tile,
                          FLAGS.overlap, FLAGS.max_side,
                          FLAGS.memory_budget and FLAGS.memory_budget * 1e9, FLAGS.cpu_kernels)
  if existing:
    print(f"{existing} outputs exist already and are skipped (--overwrite to redo them)")
  image_jobs = [job for job in jobs if job.fmt]
  failures = []
  if image_jobs:
    with cli.progress_bar(len(image_jobs)) as progress:
      failures += translate_all(image_jobs, translator, FLAGS.batch_size, progress)
  for job in (job for job in jobs if not job.fmt):
    failures += translate_video(job, translator, FLAGS.batch_size, FLAGS.video_quality,
                                FLAGS.stabilize)
  print(f"translated {len(jobs) - len(failures)} of {len(jobs)} files into {FLAGS.output}")
  if failures:
    print(f"{len(failures)} failed:")
    for source, reason in failures:
      print(f"  {source}: {reason}")
    return cli.SOME_FAILED
  return cli.OK


if __name__ == "__main__":
  cli.run(main, define_flags)
