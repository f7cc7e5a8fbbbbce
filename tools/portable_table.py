"""The table of portable exports (docs/performance.md): size, difference from the SavedModel, and speed.

  python tools/portable_table.py                       # full-size generator at reference init
  python tools/portable_table.py --model saved_models/horse2zebra/a2b

Converts one export to every --formats file (timing each conversion), runs each file in its own
runtime (LiteRT, ONNX Runtime) on real photos at 256 and 512 px beside the SavedModel's
translate_uint8 (and translate_uint8_bf16), and prints one JSON line per row, then a table.
Difference columns are against the SavedModel's fp32 output, over all photos of all sizes.
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan import export  # noqa: E402
from cyclegan import images as images_lib  # noqa: E402
from cyclegan import models  # noqa: E402
from cyclegan import portable  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
flags.DEFINE_string("model", None, "An export (base path or version folder); default: the "
                    "full-size generator at reference init (seed 0), exported to a temp folder.")
flags.DEFINE_list("photos", [os.path.join(DATA, "horse2zebra", "testA"),
                             os.path.join(DATA, "monet2photo", "testB")],
                  "Folders of real photos; the first --count of each are used.")
flags.DEFINE_integer("count", 4, "Photos taken from each folder.")
flags.DEFINE_list("sizes", ["256", "512"], "Square sides to measure at.")
flags.DEFINE_integer("repeats", 3, "Timed runs per photo and size after a warm-up run.")
FLAGS = flags.FLAGS


def _photos(side):
  files = [f for folder in FLAGS.photos for f in images_lib.find_images(folder)[:FLAGS.count]]
  if not files:
    raise SystemExit(f"no photos in {FLAGS.photos}")
  return [np.asarray(Image.fromarray(images_lib.read_image(f)[0]).resize((side, side)))[None]
          for f in files]


def _seconds(fn, photos):
  """Median seconds per image over the photos, after one warm-up call."""
  fn(photos[0])
  times = []
  for photo in photos:
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      fn(photo)
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  model = FLAGS.model
  if model is None:
    keras.utils.set_random_seed(0)
    model = export.save(models.resnet_generator(64, 9), os.path.join(tempfile.mkdtemp(), "a2b"))
  saved_model = export.resolve_version(model)[0]
  loaded = tf.saved_model.load(saved_model)
  generator = export.generator_of(loaded)
  base = export.model_base(saved_model)
  signature = lambda name: (lambda x: loaded.signatures[name](images=tf.constant(x))["images"]
                            .numpy())
  runners = {"savedmodel": signature(export.UINT8_SIGNATURES["fp32"]),
             "savedmodel_bf16": signature(export.UINT8_SIGNATURES["bf16"])}
  rows = {name: {"format": name, "bytes": sum(
      os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(saved_model)
      for f in files)} for name in runners}
  for fmt in portable.SUFFIXES:
    start = time.perf_counter()
    path = portable.write(portable.convert(generator, fmt), portable.file_path(base, fmt))
    rows[fmt] = {"format": fmt, "file": os.path.basename(path), "bytes": os.path.getsize(path),
                 "convert_s": round(time.perf_counter() - start, 1)}
    runners[fmt] = portable.runner(path)
  reference = runners["savedmodel"]
  for side in (int(s) for s in FLAGS.sizes):
    photos = _photos(side)
    want = [reference(p) for p in photos]
    for name, run in runners.items():
      checks = [portable.compare(w, run(p)) for w, p in zip(want, photos)]
      row = rows[name]
      row["max_diff"] = max(row.get("max_diff", 0), *(c.max_diff for c in checks))
      row.setdefault("mean_diffs", []).extend(c.mean_diff for c in checks)
      row.setdefault("psnrs", []).extend(c.psnr for c in checks)
      row[f"s_{side}"] = round(_seconds(run, photos), 4)
  print(f"model: {saved_model}; {len(photos)} photos at each of {FLAGS.sizes} px")
  for row in rows.values():
    row["mean_diff"] = round(float(np.mean(row.pop("mean_diffs"))), 3)
    psnrs = row.pop("psnrs")
    row["psnr_min"] = round(min(psnrs), 1) if row["max_diff"] else None
    row["psnr_mean"] = round(float(np.mean(psnrs)), 1) if row["max_diff"] else None
    print(json.dumps(row))
  sides = [int(s) for s in FLAGS.sizes]
  print("\n| format | file size | max / mean diff (levels) | PSNR min / mean | "
        + " | ".join(f"{s} px" for s in sides) + " |")
  print("|---|---|---|---|" + "---|" * len(sides))
  for row in rows.values():
    psnr = "exact" if row["psnr_min"] is None else f"{row['psnr_min']} / {row['psnr_mean']} dB"
    print(f"| {row.get('file', row['format'])} | {row['bytes'] / 2**20:.1f} MiB | "
          f"{row['max_diff']} / {row['mean_diff']} | {psnr} | "
          + " | ".join(f"{row[f's_{s}']:.3f} s" for s in sides) + " |")


if __name__ == "__main__":
  app.run(main)
