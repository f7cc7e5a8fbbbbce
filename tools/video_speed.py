"""Video throughput against the same frames as a folder of images, through cyclegan.translate.

  python tools/video_speed.py --model saved_models/horse2zebra/a2b [--size 256 --frames 48]

Makes a pan across real photos (../shared/data) as an H.264 mp4 with AAC audio and as a folder
of PNG files, translates both with the command's own code (in one process, model traced
first), and prints frames/s for: the folder, the video with --nostabilize, and the video as by
default (statistics smoothed over the shot, flow blending), as JSON lines and a table.
"""

import json
import os
import sys
import tempfile
import time

import av
import numpy as np
from absl import app, flags
from PIL import Image

from cyclegan import cli
from cyclegan import synthetic
from cyclegan import translate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_photos  # noqa: E402  (tools/)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "An exported direction (saved_models/<name>/a2b).")
flags.DEFINE_integer("size", 256, "Frame side in pixels.")
flags.DEFINE_integer("frames", 48, "Frames in the clip.")
flags.DEFINE_integer("batch_size", 4, "--batch_size of the command.")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "--precision of the command.")
flags.mark_flag_as_required("model")


def write_clip(path, frames, rate=24):
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=rate)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    sound = out.add_stream("aac", rate=48000)
    for rgb in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    out.mux(stream.encode(None))
    wave = 0.2 * np.sin(np.arange(48000 * len(frames) // rate) * 0.05).astype(np.float32)
    for start in range(0, wave.size, 1024):
      frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp",
                                         layout="mono")
      frame.sample_rate = 48000
      out.mux(sound.encode(frame))
    out.mux(sound.encode(None))


def main(argv):
  del argv
  scene = np.concatenate(real_photos.photos(FLAGS.size, 3), 1)
  step = max(1, (scene.shape[1] - FLAGS.size) // FLAGS.frames)
  frames = synthetic.camera_pan(scene, FLAGS.frames, FLAGS.size, FLAGS.size, step)
  translator = translate.TiledModel(translate.resolve_model(FLAGS.model), FLAGS.precision,
                                    None, translate.tiling.HALO, 0)
  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, "frames")
    os.makedirs(folder)
    for i, rgb in enumerate(frames):
      Image.fromarray(rgb).save(os.path.join(folder, f"{i:05d}.png"))
    clip = os.path.join(tmp, "clip.mp4")
    write_clip(clip, frames)
    translator(frames[:FLAGS.batch_size])  # trace both paths before timing
    translator.video_frames(True)(frames[:FLAGS.batch_size])
    rows = []

    def timed(name, run):
      start = time.perf_counter()
      run()
      rows.append({"what": name, "frames": FLAGS.frames, "size": FLAGS.size,
                   "frames_per_s": round(FLAGS.frames / (time.perf_counter() - start), 3)})
      print(json.dumps(rows[-1]))

    jobs, _ = translate.plan(folder, os.path.join(tmp, "out_images"), "png", True)
    timed("image folder (png)", lambda: translate.translate_all(
        jobs, translator, FLAGS.batch_size, cli.progress_bar(len(jobs))))
    for name, stabilize in (("video, --nostabilize", False), ("video (default: stabilized)", True)):
      job = translate.Job(clip, "clip.mp4", os.path.join(tmp, f"out_{stabilize}.mp4"), None)
      timed(name, lambda: translate.translate_video(job, translator, FLAGS.batch_size,
                                                    translate.video.DEFAULT_QUALITY, stabilize))
  base = rows[0]["frames_per_s"]
  print(f"\n{'':28} {'frames/s':>9} {'vs folder':>10}")
  for row in rows:
    print(f"{row['what']:28} {row['frames_per_s']:>9.3f} {row['frames_per_s'] / base:>10.2f}")


if __name__ == "__main__":
  app.run(main)
