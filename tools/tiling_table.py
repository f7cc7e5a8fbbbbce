"""Seams of tiled translation: a mosaic of four real photos, tiled against whole, and the time.

  python tools/tiling_table.py --model saved_models/synthetic/a2b
  python tools/tiling_table.py --model saved_models/horse2zebra/a2b --exact_norms 3,7

Builds a --side x --side mosaic of four different photos from ../shared/data, translates it
whole and in --tile tiles (each tile with its own statistics, then with shared statistics for
each --exact_norms), and prints one JSON line per method: mean and 99th-percentile difference
from the whole image in grey levels, and seconds per megapixel.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan import any_size  # noqa: E402
from cyclegan import export  # noqa: E402
from cyclegan import tiling  # noqa: E402

import real_photos  # noqa: E402  (tools/)

flags.DEFINE_string("model", None, "An export (base path or version folder).", required=True)
flags.DEFINE_integer("side", 2048, "Mosaic side.")
flags.DEFINE_integer("tile", 512, "Tile side.")
flags.DEFINE_integer("halo", tiling.HALO, "Context pixels per tile side.")
flags.DEFINE_list("exact_norms", ["3"], "Norms with exact statistics, one run per value.")
flags.DEFINE_integer("stats_downscale", 4, "Downscale of the whole-image pass that gives the "
                     "other norms' statistics (the memory budget raises it for huge images).")
flags.DEFINE_string("save", None, "Write the mosaic and outputs as PNGs into this folder.")
flags.DEFINE_string("figure", None, "Write the README's before/after picture here (JPEG): a "
                    "crop where four tiles meet, each tile's own statistics | shared | whole.")
FLAGS = flags.FLAGS


def mosaic(side):
  quarters = real_photos.photos(side // 2)
  return np.concatenate([np.concatenate(quarters[:2], 1), np.concatenate(quarters[2:], 1)], 0)


def main(argv):
  del argv
  loaded = tf.saved_model.load(export.resolve_version(FLAGS.model)[0])
  generator = export.generator_of(loaded)
  image = mosaic(FLAGS.side)
  megapixels = image.shape[0] * image.shape[1] / 1e6
  graph = tf.function(lambda x: any_size.translate_uint8(generator, x), input_signature=[
      tf.TensorSpec([1, None, None, 3], tf.uint8)])  # eager would hold every activation
  whole_fn = lambda x: graph(tf.constant(x[None])).numpy()[0]
  whole_fn(image[:64, :64])  # trace
  start = time.perf_counter()
  whole = whole_fn(image)
  results = {"whole": (whole, time.perf_counter() - start)}

  start = time.perf_counter()
  own = np.empty_like(image)
  tile = FLAGS.tile
  for top in range(0, FLAGS.side, tile):
    for left in range(0, FLAGS.side, tile):
      own[top:top + tile, left:left + tile] = whole_fn(image[top:top + tile, left:left + tile])
  results["own statistics per tile"] = (own, time.perf_counter() - start)
  for exact in (int(n) for n in FLAGS.exact_norms):
    shared = tiling.SharedStatistics(generator, FLAGS.halo, exact_norms=exact,
                                     stats_downscale=FLAGS.stats_downscale)
    shared(image[:256, :256], tile)  # trace
    start = time.perf_counter()
    out = shared(image, tile)
    results[f"shared statistics, exact first {exact}"] = (out, time.perf_counter() - start)
  for name, (out, seconds) in results.items():
    diff = np.abs(out.astype(int) - whole)
    print(json.dumps({"method": name, "tile": 0 if name == "whole" else tile,
                      "mean_levels": round(float(diff.mean()), 2),
                      "p99_levels": float(np.percentile(diff, 99)), "max_levels": int(diff.max()),
                      "s_per_mp": round(seconds / megapixels, 3)}))
    if FLAGS.save:
      os.makedirs(FLAGS.save, exist_ok=True)
      Image.fromarray(out).save(os.path.join(FLAGS.save, name.replace(" ", "_") + ".png"))
  if FLAGS.save:
    Image.fromarray(image).save(os.path.join(FLAGS.save, "mosaic.png"))
  if FLAGS.figure:
    crop = lambda x: x[tile - 96:tile + 96, tile - 96:tile + 96]  # centred on a tile corner
    gap = np.full((192, 8, 3), 255, np.uint8)
    panels = [crop(results[name][0]) for name in list(results)[1:3]] + [crop(whole)]
    Image.fromarray(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], 1)).save(
        FLAGS.figure, quality=90)


if __name__ == "__main__":
  app.run(main)
