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

import numpy as np
from absl import flags

from cyclegan import cli
from cyclegan import config as config_lib
from cyclegan import input_pipeline
from cyclegan import metrics
from cyclegan import translate


def define_flags():
  """Flags are defined by the command only, so that other modules can import this one."""
  flags.DEFINE_string("model", None, "An exported direction (base path or version folder).")
  flags.DEFINE_string("dataset", config_lib.SYNTHETIC, "Same forms as cyclegan.train --dataset.")
  flags.DEFINE_enum("split", "test", ["test", "train"], "Which split's A and B images to use.")
  flags.DEFINE_enum("direction", "auto", ["auto", "a2b", "b2a"],
                    "What the model translates; auto: from the model path (b2a if it says so).")
  flags.DEFINE_enum("metrics", "all", ["all", "paired", "fid"],
                    "paired: L1/PSNR/SSIM (built-in dataset only); fid: FID and KID (needs "
                    "InceptionV3 weights); all: what is possible, saying what was skipped.")
  flags.DEFINE_string("inception_weights", "keras", "InceptionV3 weights: 'keras' (Keras's cache, "
                      "~/.keras/models), a .h5 file, or 'random' (tests only: numbers meaningless).")
  flags.DEFINE_integer("max_images", 0, "Use at most this many images per domain (0: all).")
  flags.DEFINE_string("output", None, "Also write the JSON line to this file.")
  flags.mark_flag_as_required("model")


FLAGS = flags.FLAGS


def _images(domain, limit):
  count = min(domain.size, limit) if limit else domain.size
  return [domain.load(i).numpy() for i in range(count)]


def _translate(translator, images):
  return [out for batch in input_pipeline.same_size_batches(images, 16)
          for out in translator(np.stack(batch))]


def evaluate(model_path, dataset, split="test", direction="a2b", which="all",
             inception_weights="keras", max_images=0):
  """The metrics as a dict; raises cli.UserError (e.g. MissingWeightsError, DataError).

  which="all" computes what it can: without InceptionV3 weights it reports the paired metrics
  and says in "fid_skipped" why FID and KID are not there; "fid" without weights is an error.
  """
  started = time.perf_counter()
  config = config_lib.resolve(None, {"dataset": dataset})
  source_split, target_split = (f"{split}A", f"{split}B")[::1 if direction == "a2b" else -1]
  domains = input_pipeline.load_domains(config, (f"{split}A", f"{split}B"))
  missing = [s for s in (source_split, target_split) if s not in domains]
  if missing:
    raise input_pipeline.DataError(f"{dataset} has no {missing[0]} split to evaluate on")
  translator = translate.TiledModel(translate.resolve_model(model_path), "fp32", 0, 0, 0)
  sources = _images(domains[source_split], max_images)
  targets = _images(domains[target_split], max_images)
  outputs = _translate(translator, sources)
  result = {"model": model_path, "dataset": dataset, "split": split, "direction": direction,
            "images": len(outputs), "targets": len(targets)}
  is_paired = input_pipeline.has_pairs(config)
  if which in ("all", "paired"):
    if not is_paired and which == "paired":
      raise input_pipeline.DataError("paired metrics need ground truth: only the built-in "
                                     "dataset has it; use --metrics fid")
    if is_paired:
      result["paired"] = metrics.paired(np.stack(outputs), np.stack(targets))
      result["identity_baseline"] = metrics.paired(np.stack(sources), np.stack(targets))
  if which in ("all", "fid"):
    try:
      model = metrics.inception(inception_weights)
    except metrics.MissingWeightsError as e:
      if which == "fid":
        raise
      result["fid_skipped"] = str(e)
      result["seconds"] = round(time.perf_counter() - started, 1)
      return result
    feats = {name: metrics.inception_features(model, images)
             for name, images in (("outputs", outputs), ("targets", targets), ("sources", sources))}
    result["fid"] = metrics.fid(feats["outputs"], feats["targets"])
    result["kid"], result["kid_std"] = metrics.kid(feats["outputs"], feats["targets"])
    result["fid_identity_baseline"] = metrics.fid(feats["sources"], feats["targets"])
    result["inception_weights"] = inception_weights
  result["seconds"] = round(time.perf_counter() - started, 1)
  return result


def main(argv):
  cli.no_arguments(argv)
  direction = FLAGS.direction
  if direction == "auto":
    direction = "b2a" if "b2a" in FLAGS.model.replace("\\", "/").split("/") else "a2b"
  result = evaluate(FLAGS.model, FLAGS.dataset, FLAGS.split, direction, FLAGS.metrics,
                    FLAGS.inception_weights, FLAGS.max_images)
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
