"""Measure an exported direction: FID/KID against the real target domain, paired metrics
where ground truth exists (the built-in dataset), and the identity baseline beside each.

  python -m cyclegan.evaluate --model saved_models/synthetic/a2b --metrics paired
  python -m cyclegan.evaluate --model saved_models/horse2zebra/a2b --dataset horse2zebra

Prints one JSON line (and writes it to --output). The identity baseline scores the untranslated
inputs the same way, so that a number means something: a model must beat it.
"""

import json
import sys
import time

from absl import flags

from cyclegan import cli
from cyclegan import config as config_lib
from cyclegan import evaluation
from cyclegan import input_pipeline
from cyclegan import translate


def define_flags():
  """Flags are defined by the command only, so that other modules can import this one."""
  flags.DEFINE_string("model", None, "An exported direction (base path or version folder), or "
                      "a published model's name.")
  flags.DEFINE_string("dataset", config_lib.SYNTHETIC, "Same forms as cyclegan.train --dataset.")
  flags.DEFINE_enum("split", "test", ["test", "train"], "Which split's A and B images to use.")
  flags.DEFINE_enum("direction", "auto", ["auto", "a2b", "b2a"],
                    "What the model translates; auto: from the model path (b2a if it says so).")
  flags.DEFINE_enum("metrics", "all", ["all", "paired", "fid"],
                    "paired: L1/PSNR/SSIM (built-in dataset only); fid: FID and KID (needs "
                    "Inception weights); all: what is possible, saying what was skipped.")
  flags.DEFINE_string("inception", "auto", "Inception for FID/KID: fid2015 (the 2015 graph that "
                      "pytorch-fid and published FIDs use, from pt_inception-2015-12-05-6726825d"
                      ".pth), keras (Keras's ImageNet weights), auto (fid2015 if its file is "
                      "found, else keras), a .pth or .h5 file, or random (tests only).")
  flags.DEFINE_alias("inception_weights", "inception")
  flags.DEFINE_integer("max_images", 0, "Use at most this many images per domain (0: all).")
  flags.DEFINE_string("output", None, "Also write the JSON line to this file.")
  flags.mark_flag_as_required("model")


FLAGS = flags.FLAGS


def evaluate(model_path, dataset, split="test", direction="a2b", which="all",
             inception="auto", max_images=0):
  """The metrics as a dict (see evaluation.Evaluator.translation); raises cli.UserError."""
  started = time.perf_counter()
  config = config_lib.resolve(None, {"dataset": dataset})
  names = {"a": f"{split}A", "b": f"{split}B"}
  domains = input_pipeline.load_domains(config, tuple(names.values()))
  missing = [n for n in names.values() if n not in domains]
  if missing:
    raise input_pipeline.DataError(f"{dataset} has no {missing[0]} split to evaluate on")
  evaluator = evaluation.Evaluator(config, {k: domains[n] for k, n in names.items()},
                                   max_images)
  model = translate.TiledModel(translate.resolve_model(model_path), "fp32", 0, 0, 0)
  result = {"model": model_path, "dataset": dataset, "split": split, "direction": direction,
            **evaluator.translation(model, direction, which, inception)}
  result["seconds"] = round(time.perf_counter() - started, 1)
  return result


def main(argv):
  cli.no_arguments(argv)
  direction = FLAGS.direction
  if direction == "auto":
    direction = "b2a" if "b2a" in FLAGS.model.replace("\\", "/").split("/") else "a2b"
  result = evaluate(FLAGS.model, FLAGS.dataset, FLAGS.split, direction, FLAGS.metrics,
                    FLAGS.inception, FLAGS.max_images)
  if "fid_skipped" in result:
    sys.stderr.write(f"FID and KID skipped: {result['fid_skipped']}\n")
  line = json.dumps(result)
  print(line)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(line + "\n")
  return cli.OK


if __name__ == "__main__":
  cli.run(main, define_flags)
