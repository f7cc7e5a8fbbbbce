"""The best checkpoint of each direction by held-out evaluation, kept out of
CheckpointManager's rotation. A CycleGAN's two directions are two models (two exports), so
each has its own best: A->B may be best at step 500 and B->A at step 1250.

  <workdir>/best/best.json      {direction: {"step", "metric", "inception", "value", "metrics",
                                "checkpoint"}}
  <workdir>/best/step-<N>/      hard links to (or, where the filesystem has none, copies of)
                                checkpoint ckpt-<N>'s files: rotation deletes its own names only
"""

import glob
import json
import math
import os
import shutil

from cyclegan import files

# Metric -> whether higher is better.
METRICS = {"psnr": True, "ssim": True, "kid": False, "fid": False, "swd": False}


def choose_metric(requested, has_pairs, has_inception):
  """(metric, why) for --best_metric: auto takes the most telling one available."""
  if requested != "auto":
    return requested, "chosen with --best_metric"
  if has_pairs:
    return "psnr", "the data has ground-truth pairs"
  if has_inception:
    return "kid", "KID, unlike FID, is unbiased on a few dozen held-out images"
  return "swd", ("no Inception weights for KID/FID (see --inception), so the patch SWD, which "
                 "needs none")


def is_better(metric, value, best, inception=None):
  """Whether `value` beats the direction's best record so far (None: no best yet). A record
  of another metric, or of KID/FID on another Inception (another scale), is beaten by any."""
  if value is None or not math.isfinite(value):
    return False
  if best is None or best["metric"] != metric or best.get("inception") != inception:
    return True
  return value > best["value"] if METRICS[metric] else value < best["value"]


def folder(workdir):
  return os.path.join(workdir, "best")


def _record_path(workdir):
  return os.path.join(folder(workdir), "best.json")


def read(workdir):
  """{direction: best record}; empty before the first evaluation."""
  if not os.path.exists(_record_path(workdir)):
    return {}
  with open(_record_path(workdir)) as f:
    return json.load(f)


def checkpoint_path(workdir, direction):
  """The direction's best checkpoint prefix (what tf.train.Checkpoint.restore takes), or None."""
  record = read(workdir).get(direction)
  return os.path.join(folder(workdir), record["checkpoint"]) if record else None


def _link_or_copy(source, target):
  try:
    os.link(source, target)
  except OSError:
    shutil.copy2(source, target)


def keep(workdir, checkpoint_prefix, records):
  """Keeps checkpoint `checkpoint_prefix` (a CheckpointManager path) as the best of each
  direction in `records` ({direction: {"step", "metric", "value", "metrics"}}); checkpoints no
  direction holds any more are then removed. best.json is switched atomically, so a kill
  leaves the old best or the new one, never half of one."""
  step = next(iter(records.values()))["step"]
  step_folder = os.path.join(folder(workdir), f"step-{step}")
  kept = read(workdir)
  if not any(r["step"] == step for r in kept.values()):  # else this checkpoint, kept already
    shutil.rmtree(step_folder, ignore_errors=True)  # a step of an abandoned run
    with files.atomic_path(step_folder) as temporary:
      os.makedirs(temporary)
      for source in glob.glob(glob.escape(checkpoint_prefix) + ".*"):
        _link_or_copy(source, os.path.join(temporary, os.path.basename(source)))
  for direction, record in records.items():
    kept[direction] = {**record, "checkpoint": f"step-{step}/{os.path.basename(checkpoint_prefix)}"}
  _write(workdir, kept)


def forget_after(workdir, step):
  """Drops the records of steps after `step` (a run resumed from an earlier checkpoint, the
  later ones lost) and their checkpoints; returns what is left."""
  kept = {d: r for d, r in read(workdir).items() if r["step"] <= step}
  if kept != read(workdir):
    _write(workdir, kept)
  return kept


def _write(workdir, kept):
  """best.json, atomically; then removes the checkpoints no direction holds any more."""
  os.makedirs(folder(workdir), exist_ok=True)
  with files.atomic_open(_record_path(workdir)) as f:
    json.dump(kept, f, indent=2)
  held = {os.path.dirname(record["checkpoint"]) for record in kept.values()}
  for other in glob.glob(os.path.join(glob.escape(folder(workdir)), "step-*")):
    if os.path.basename(other) not in held:
      shutil.rmtree(other, ignore_errors=True)
