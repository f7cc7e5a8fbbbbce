"""Held-out quality, measured the same way during training (`--eval_every`) and after it
(`cyclegan.evaluate`): an Evaluator holds a split's images, and takes any translation function
(uint8 [N, H, W, 3] -> uint8), the in-process generators' or an export's.
"""

import numpy as np

from cyclegan import input_pipeline
from cyclegan import metrics

# Held-out images per domain in the page's grids (rows: A, A->B, A->B->A).
GRID_IMAGES = 4


def _images(split, limit, size):
  count = min(split.size, limit) if limit else split.size
  images = (split.load(i) for i in range(count))
  return [(input_pipeline.resize_square(image, size) if size else image).numpy()
          for image in images]


def _translate(translate, images):
  return [out for batch in input_pipeline.same_size_batches(images, 16)
          for out in np.asarray(translate(np.stack(batch)))]


def _grid(*rows):
  """Rows of same-size uint8 images -> one uint8 image, a row per list."""
  return np.concatenate([np.concatenate(row, 1) for row in rows], 0)


def spread(outputs, inputs):
  """How much outputs differ from one another, as a fraction of how much their inputs do: the
  per-pixel standard deviation across images, averaged. Near 0: the outputs ignore the input."""
  across = lambda images: np.stack(images).astype(np.float32).std(0).mean()
  return float(across(outputs) / max(across(inputs), 1e-6))


def change(outputs, inputs):
  """Mean |output - input| on [0, 1]. Near 0: the translation returns its input."""
  return float(np.mean([np.abs(o.astype(np.float32) - i).mean()
                        for o, i in zip(outputs, inputs)]) / 255)


class Evaluator:
  """The A and B images of one split (at most max_images each, 0: all), loaded once, as they
  are or (size) resized to size x size: a run's evaluations need one size (and a small one)."""

  def __init__(self, config, splits, max_images=0, size=None):
    """splits: {"a": Split, "b": Split}, e.g. from input_pipeline.load_domains."""
    self.images = {k: _images(split, max_images, size) for k, split in splits.items()}
    self.has_pairs = input_pipeline.has_pairs(config)
    self._target_features = {}  # {(inception kind, domain): features}: real images never change

  def _features(self, model, kind, domain):
    if (kind, domain) not in self._target_features:
      self._target_features[kind, domain] = metrics.inception_features(model, self.images[domain])
    return self._target_features[kind, domain]

  def translation(self, translate, direction="a2b", which="all", inception="auto"):
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
        model, kind = metrics.inception(inception)
      except metrics.MissingWeightsError as e:
        if which == "fid":
          raise metrics.MissingWeightsError(f"{e}, or use --metrics paired") from None
        result["fid_skipped"] = str(e)
        return result
      feats = {name: metrics.inception_features(model, images)
               for name, images in (("outputs", outputs), ("targets", targets),
                                    ("sources", sources))}
      result["fid"] = metrics.fid(feats["outputs"], feats["targets"])
      result["kid"], result["kid_std"] = metrics.kid(feats["outputs"], feats["targets"])
      result["fid_identity_baseline"] = metrics.fid(feats["sources"], feats["targets"])
      result["inception"] = kind
    return result

  def heldout(self, translations, inception=None):
    """What a training run's evaluation reports, for each direction given ({"a2b": fn, "b2a":
    fn}; CUT has a2b only): SWD against the real target images (always), KID and FID with an
    Inception ((model, kind) or None), the paired metrics with ground truth, cycle L1 with both
    directions, and the alarms' spread and change; metric names prefixed by the direction.
    Needs images of one size (Evaluator's size). Returns (values, grids): grids {"a_to_b": uint8 image of rows A, A->B(, A->B->A)}."""
    values, grids, outputs = {}, {}, {}
    for direction, translate in translations.items():
      source, target = ("a", "b") if direction == "a2b" else ("b", "a")
      outputs[direction] = out = _translate(translate, self.images[source])
      inputs = self.images[source]
      values[f"{direction}_swd"] = metrics.swd(out, self.images[target])
      values[f"{direction}_spread"] = spread(out, inputs)
      values[f"{direction}_change"] = change(out, inputs)
      if self.has_pairs:
        for name, value in metrics.paired(np.stack(out), np.stack(self.images[target])).items():
          values[f"{direction}_{name}"] = value
      if inception:
        model, kind = inception
        features = metrics.inception_features(model, out)
        targets = self._features(model, kind, target)
        values[f"{direction}_fid"] = metrics.fid(features, targets)
        values[f"{direction}_kid"] = metrics.kid(features, targets)[0]
    for direction in outputs:
      source, other = ("a", "b2a") if direction == "a2b" else ("b", "a2b")
      shown = slice(0, GRID_IMAGES)
      rows = [self.images[source][shown], outputs[direction][shown]]
      if other in translations:
        rebuilt = _translate(translations[other], outputs[direction])
        values[f"cycle_l1_{source}"] = change(rebuilt, self.images[source])
        rows.append(rebuilt[shown])
      grids[f"{source}_to_{'b' if source == 'a' else 'a'}"] = _grid(*rows)
    return values, grids
