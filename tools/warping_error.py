"""Temporal stability of video translation: the warping error on a synthetic camera pan.

  python tools/warping_error.py --model saved_models/horse2zebra/a2b

A pan across real photos (../shared/data, side by side) moves a known number of pixels per
frame, so frame t+1 at column x shows what frame t showed at x + step. The warping error is the
mean absolute difference (grey levels) between consecutive outputs so aligned: 0 for the input
frames, and what flicker and colour pumping add for the outputs. Printed for each frame on its
own (as images) and with the statistics smoothed over the shot (the default for videos), as
JSON lines and a table.
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

from cyclegan import synthetic
from cyclegan import translate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_photos  # noqa: E402  (tools/)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "An exported direction (saved_models/<name>/a2b).")
flags.DEFINE_string("data", real_photos.DATA, "Folder with horse2zebra/ and monet2photo/.")
flags.DEFINE_integer("frames", 48, "Frames in the pan.")
flags.DEFINE_integer("size", 256, "Frame side in pixels.")
flags.DEFINE_list("steps", ["4", "3"], "Pixels the camera moves per frame; one row each "
                  "(4: on the generator's stride grid, 3: off it).")
flags.DEFINE_integer("margin", 16, "Pixels left out at each frame border.")
flags.DEFINE_integer("batch_size", 4, "Frames per call.")
flags.mark_flag_as_required("model")


def panorama(side, data=real_photos.DATA):
  """Three different real photos side by side, each side x side."""
  return np.concatenate(real_photos.photos(side, 3, data), 1)


def warping_error(frames, step, margin):
  """Mean |frame[t+1][:, x] - frame[t][:, x + step]| over t and the frames' inner region."""
  frames = frames.astype(np.float32)
  later = frames[1:, margin:-margin, margin:-margin - step]
  earlier = frames[:-1, margin:-margin, margin + step:-margin]
  return float(np.abs(later - earlier).mean())


def translate_frames(translate_batch, frames, batch_size):
  return np.concatenate([translate_batch(frames[i:i + batch_size])
                         for i in range(0, len(frames), batch_size)])


def main(argv):
  del argv
  translator = translate.TiledModel(translate.resolve_model(FLAGS.model), "fp32", 0, 0, 0)
  scene = panorama(FLAGS.size, FLAGS.data)
  rows = []
  for step in (int(s) for s in FLAGS.steps):
    frames = synthetic.camera_pan(scene, FLAGS.frames, FLAGS.size, FLAGS.size, step)
    row = {"step": step, "frames": FLAGS.frames, "size": FLAGS.size,
           "input": warping_error(frames, step, FLAGS.margin)}
    for name, stabilize in (("per_frame", False), ("stabilized", True)):
      translator.video_frames(stabilize)(frames[:FLAGS.batch_size])  # trace first
      start = time.perf_counter()
      out = translate_frames(translator.video_frames(stabilize), frames, FLAGS.batch_size)
      row[name] = round(warping_error(out, step, FLAGS.margin), 3)
      row[f"{name}_frames_per_s"] = round(FLAGS.frames / (time.perf_counter() - start), 2)
    row["ratio"] = round(row["stabilized"] / row["per_frame"], 3)
    print(json.dumps(row))
    rows.append(row)
  print(f"\n{'step':>4} {'input':>6} {'per-frame':>10} {'stabilized':>11} {'ratio':>6}")
  for r in rows:
    print(f"{r['step']:>4} {r['input']:>6.2f} {r['per_frame']:>10.2f} {r['stabilized']:>11.2f} "
          f"{r['ratio']:>6.2f}")


if __name__ == "__main__":
  app.run(main)
