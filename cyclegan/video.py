"""Videos and animated GIF/WebP through a frame translator.

Decoding, encoding and muxing are PyAV's (FFmpeg ships in its wheel). The output keeps the
input's container, size, frame count and every frame's timestamp (so frame rate and duration),
and copies the audio streams' packets unchanged; video is H.264 (VP9 in WebM, which allows no
H.264) at a constant-quality --video_quality. A file is written under a hidden temporary name
and renamed when complete, so an interrupted run leaves no half video and a re-run redoes it.
"""

import fractions
import os
import queue
import threading

import av
import numpy as np
from PIL import Image, ImageSequence

from cyclegan import files

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
ANIMATION_EXTENSIONS = (".gif", ".webp")  # videos when they have more than one frame
DEFAULT_QUALITY = 18  # x264's CRF: 0 lossless, 23 its default, 51 worst; ~visually lossless


class VideoError(Exception):
  """A video that cannot be decoded or written; the message says why."""


def is_video_name(path):
  return path.lower().endswith(VIDEO_EXTENSIONS)


def is_animation(path):
  """An animated GIF or WebP (more than one frame)."""
  if not path.lower().endswith(ANIMATION_EXTENSIONS):
    return False
  try:
    with Image.open(path) as image:
      return getattr(image, "n_frames", 1) > 1
  except Exception:  # pylint: disable=broad-except  (read as an image, and reported there)
    return False


def probe(path):
  """(frames, (height, width, 3)) from the file's header; frames estimated from duration x rate
  where the container does not say. (0, None) if it cannot be opened (translating will say why)."""
  try:
    if not is_video_name(path):
      with Image.open(path) as image:
        return image.n_frames, (image.height, image.width, 3)
    with av.open(path) as container:
      stream = container.streams.video[0]
      shape = (stream.codec_context.height, stream.codec_context.width, 3)
      if stream.frames:
        return stream.frames, shape
      seconds = (float(stream.duration * stream.time_base) if stream.duration
                 else container.duration / av.time_base)
      return int(seconds * float(stream.average_rate or 25) + 0.5), shape
  except Exception:  # pylint: disable=broad-except
    return 0, None


def translate(source, target, translate_batch, batch_size, quality=DEFAULT_QUALITY,
              progress=None):
  """Translates every frame of `source` into `target` with translate_batch(uint8 [N, H, W, 3]
  consecutive frames) -> same shape; raises VideoError."""
  try:
    with files.atomic_path(target) as temporary:
      if is_video_name(source):
        _translate_video(source, temporary, translate_batch, batch_size, quality, progress)
      else:
        _translate_animation(source, temporary, translate_batch, batch_size, progress)
  except (av.FFmpegError, OSError, ValueError, EOFError) as e:
    raise VideoError(f"{type(e).__name__}: {e}") from e


def _translate_animation(source, target, translate_batch, batch_size, progress):
  """Animated GIF or WebP via Pillow: per-frame durations, loop count and alpha kept."""
  with Image.open(source) as image:
    durations, frames, alphas = [], [], []
    for frame in ImageSequence.Iterator(image):
      rgba = np.asarray(frame.convert("RGBA"))  # loads the frame, and with it its duration
      durations.append(frame.info.get("duration", image.info.get("duration", 100)))
      frames.append(np.ascontiguousarray(rgba[..., :3]))
      alphas.append(rgba[..., 3] if (rgba[..., 3] < 255).any() else None)
    loop = image.info.get("loop", 0)
    fmt = image.format
  out = []
  for start in range(0, len(frames), batch_size):
    out.extend(translate_batch(np.stack(frames[start:start + batch_size])))
    if progress:
      progress.update(len(frames[start:start + batch_size]))
  pictures = [Image.fromarray(rgb) if alpha is None else Image.fromarray(np.dstack([rgb, alpha]))
              for rgb, alpha in zip(out, alphas)]
  options = {"quality": 90} if fmt == "WEBP" else {"disposal": 2}
  pictures[0].save(target, format=fmt, save_all=True, append_images=pictures[1:],
                   duration=durations, loop=loop, **options)


_END = object()


def _decode(container, stream, items, stop):
  """Reader thread: ("frame", rgb, pts) and ("packet", audio packet) in file order, then _END."""
  try:
    for packet in container.demux([stream, *container.streams.audio]):
      if stop.is_set():
        break
      if packet.stream.type == "audio":
        if packet.dts is not None:
          items.put(("packet", packet))
        continue
      for frame in packet.decode():
        items.put(("frame", frame.to_ndarray(format="rgb24"), frame.pts))
  except BaseException as e:  # pylint: disable=broad-except  (handed to the main thread)
    items.put(("error", e))
  items.put(_END)


def _translate_video(source, target, translate_batch, batch_size, quality, progress):
  with av.open(source) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fmt = container.format.name.split(",")[0]
    with av.open(target, "w", format=_muxer(target, fmt)) as output:
      webm = target.lower().endswith(".webm")
      rate = stream.average_rate or stream.guessed_rate or 25
      encoder = output.add_stream("libvpx-vp9" if webm else "libx264", rate=rate)
      encoder.width, encoder.height = stream.codec_context.width, stream.codec_context.height
      even = encoder.width % 2 == 0 and encoder.height % 2 == 0
      encoder.pix_fmt = "yuv420p" if even or webm else "yuv444p"
      encoder.time_base = stream.time_base
      encoder.codec_context.time_base = stream.time_base
      avi = output.format.name == "avi"
      encoder.options = ({"crf": str(quality), "b": "0", "row-mt": "1", "deadline": "good",
                          "cpu-used": "4"} if webm else {"crf": str(quality)})
      if avi:  # AVI has no presentation times: frames must be stored in display order
        encoder.options = {**encoder.options, "bf": "0"}
        encoder.time_base = encoder.codec_context.time_base = 1 / fractions.Fraction(rate)
      audio = {s.index: output.add_stream_from_template(s) for s in container.streams.audio}
      items = queue.Queue(maxsize=4 * batch_size)
      stop = threading.Event()
      reader = threading.Thread(target=_decode, args=(container, stream, items, stop),
                                daemon=True)
      reader.start()
      batch, pts, held_packets, index = [], [], [], 0

      last_pts = None

      def flush():
        nonlocal index, last_pts
        if batch:
          for rgb, stamp in zip(translate_batch(np.stack(batch)), pts):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if avi or stamp is None or (last_pts is not None and stamp <= last_pts):
              stamp = index  # AVI stores no times (its decoded ones are guesses): frame numbers
            frame.pts = last_pts = stamp
            frame.time_base = encoder.codec_context.time_base
            index += 1
            output.mux(encoder.encode(frame))
          if progress:
            progress.update(len(batch))
          batch.clear()
          pts.clear()
        for packet in held_packets:
          packet.stream = audio[packet.stream.index]
          output.mux(packet)
        held_packets.clear()

      try:
        while (item := items.get()) is not _END:
          if item[0] == "error":
            raise item[1]
          if item[0] == "packet":
            held_packets.append(item[1])
            continue
          if batch and item[1].shape != batch[0].shape:
            flush()
          batch.append(item[1])
          pts.append(item[2])
          if len(batch) >= batch_size:
            flush()
        flush()
        output.mux(encoder.encode(None))
      finally:
        stop.set()
        while reader.is_alive():  # Unblock a reader waiting on a full queue, then let it end.
          try:
            items.get(timeout=0.1)
          except queue.Empty:
            pass
  if index == 0:
    raise ValueError("no frames could be decoded")


def _muxer(target, input_format):
  """The input's container, unless the target's extension says another."""
  by_extension = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska",
                  ".webm": "webm", ".avi": "avi"}
  return by_extension.get(os.path.splitext(target)[1].lower(), input_format)
