"""Held-out quality, measured the same way during training (`--eval_every`) and after it
(`cyclegan.evaluate`): an Evaluator holds a split's images, and takes any translation function
(uint8 [N, H, W, 3] -> uint8), the in-process generators' or an export's.
"""

import numpy as np

from cyclegan import input_pipeline
from cyclegan import metrics


def _images(split, limit):
  count = min(split.size, limit) if limit else split.size
  return [split.load(i).numpy() for i in range(count)]


def _translate(translate, images):
  return [out for batch in input_pipeline.same_size_batches(images, 16)
          for out in np.asarray(translate(np.stack(batch)))]


class Evaluator:
  """The A and B images of one split (at most max_images each, 0: all), loaded once."""

  def __init__(self, config, splits, max_images=0):
    """splits: {"a": Split, "b": Split}, e.g. from input_pipeline.load_domains."""
    self.images = {k: _images(split, max_images) for k, split in splits.items()}
    self.has_pairs = input_pipeline.has_pairs(config)

  def cycle_l1(self, translate_a2b, translate_b2a):
    """Mean |x - back(forth(x))| on [0, 1], each way: the cycle loss without training."""
    def l1(images, forth, back):
      rebuilt = _translate(back, _translate(forth, images))
      return float(np.mean([np.abs(r.astype(np.float32) - x).mean()
                            for r, x in zip(rebuilt, images)]) / 255)
    return {"cycle_l1_a": l1(self.images["a"], translate_a2b, translate_b2a),
            "cycle_l1_b": l1(self.images["b"], translate_b2a, translate_a2b)}

  def translation(self, translate, direction="a2b", which="all", inception_weights="keras"):
    """Paired metrics (where ground truth exists) and FID/KID of one direction's outputs.

    which="all" computes what it can: without InceptionV3 weights it reports the paired metrics
    and says in "fid_skipped" why FID and KID are not there; "fid" without weights is an error.
    """
    sources, targets = (self.images["a"], self.images["b"])[::1 if direction == "a2b" else -1]
    outputs = _translate(translate, sources)
    result = {"images": len(outputs), "targets": len(targets)}
    if which in ("all", "paired"):
      if not self.has_pairs and which == "paired":
        raise input_pipeline.DataError("paired metrics need ground truth: only the built-in "
                                       "dataset has it; use --metrics fid")
      if self.has_pairs:
        result["paired"] = metrics.paired(np.stack(outputs), np.stack(targets))
        result["identity_baseline"] = metrics.paired(np.stack(sources), np.stack(targets))
    if which in ("all", "fid"):
      try:
        model = metrics.inception(inception_weights)
      except metrics.MissingWeightsError as e:
        if which == "fid":
          raise
        result["fid_skipped"] = str(e)
        return result
      feats = {name: metrics.inception_features(model, images)
               for name, images in (("outputs", outputs), ("targets", targets),
                                    ("sources", sources))}
      result["fid"] = metrics.fid(feats["outputs"], feats["targets"])
      result["kid"], result["kid_std"] = metrics.kid(feats["outputs"], feats["targets"])
      result["fid_identity_baseline"] = metrics.fid(feats["sources"], feats["targets"])
      result["inception_weights"] = inception_weights
    return result
