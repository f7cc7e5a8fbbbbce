"""The layout of a training workdir, in one place for train, export and evaluate.

  <workdir>/config.json    the resolved config (`auto` kept as auto), for resume and export
  <workdir>/checkpoints/   tf.train.CheckpointManager's ckpt-<step> files (an unreadable one
                           moved aside as ckpt-<step>.*.corrupt)
  <workdir>/tensorboard/   losses, learning rate, image grids, quality metrics, alarms
  <workdir>/best/          the best checkpoint by held-out evaluation (best_checkpoint.py)
  <workdir>/samples/       index.html: the evaluations' grids and metric curve, to open in a
                           browser; evaluations.jsonl: one line per held-out evaluation
"""

import glob
import json
import os

import tensorflow as tf
from absl import logging
from google.protobuf import text_format

from cyclegan import config as config_lib
from cyclegan import files


def config_path(workdir):
  return os.path.join(workdir, "config.json")


def checkpoint_dir(workdir):
  return os.path.join(workdir, "checkpoints")


def tensorboard_dir(workdir):
  return os.path.join(workdir, "tensorboard")


def samples_dir(workdir):
  return os.path.join(workdir, "samples")


def checkpoint_step(path):
  """The step of a checkpoint path (`.../ckpt-<step>`)."""
  return int(path.rsplit("-", 1)[1])


def read_evaluations(workdir, up_to=None):
  """The held-out evaluations, oldest first, one per step (the last written wins), without
  those after step `up_to`; a line cut short by a kill is skipped."""
  path = os.path.join(samples_dir(workdir), "evaluations.jsonl")
  by_step = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if up_to is None or record["step"] <= up_to:
          by_step[record["step"]] = record
  return [by_step[step] for step in sorted(by_step)]


def write_evaluations(workdir, records):
  with files.atomic_open(os.path.join(samples_dir(workdir), "evaluations.jsonl")) as f:
    f.writelines(json.dumps(record) + "\n" for record in records)


def load_config(workdir):
  """The config a workdir was trained with, or None for a new workdir."""
  path = config_path(workdir)
  return config_lib.make_config(config_lib.load_saved(path)) if os.path.exists(path) else None


def checkpoints(workdir):
  """The checkpoint paths CheckpointManager keeps, oldest first."""
  state = tf.train.get_checkpoint_state(checkpoint_dir(workdir))
  return list(state.all_model_checkpoint_paths) if state else []


# What reading a truncated, damaged or missing checkpoint raises (TF 2.21): a short data file
# gives IndexError ("Read less bytes than requested"), a damaged index a bare OpError ("not an
# sstable"). Not what a checkpoint that reads but does not fit the model raises (ValueError,
# AssertionError: another config), which is no damage.
UNREADABLE = (tf.errors.OpError, IndexError)


def _forget_checkpoint(directory, path):
  """Drops `path` from CheckpointManager's list (the `checkpoint` text proto), so that neither
  the manager nor a later run picks it."""
  state = tf.train.get_checkpoint_state(directory)
  kept = [i for i, p in enumerate(state.all_model_checkpoint_paths) if p != path]
  times = list(state.all_model_checkpoint_timestamps)
  # Relative, as CheckpointManager writes them, so that the workdir can move.
  state.all_model_checkpoint_paths[:] = [
      os.path.relpath(state.all_model_checkpoint_paths[i], directory) for i in kept]
  state.all_model_checkpoint_timestamps[:] = [times[i] for i in kept if i < len(times)]
  state_file = os.path.join(directory, "checkpoint")
  if not kept:
    os.remove(state_file)
    return
  state.model_checkpoint_path = state.all_model_checkpoint_paths[-1]
  with files.atomic_open(state_file) as f:
    f.write(text_format.MessageToString(state))


def restore_newest(workdir, restore, move_aside=True):
  """The newest checkpoint that `restore(path)` reads without error, or None where there is
  none. Each newer unreadable one gets a warning naming it and, with `move_aside` (the chief
  of a run), its files renamed `<file>.corrupt` and dropped from the checkpoint list: kept for
  a look, never deleted. Raises ValueError when checkpoints exist but none reads."""
  directory, paths = checkpoint_dir(workdir), checkpoints(workdir)
  found = bool(paths)
  for path in list(reversed(paths)):
    try:
      restore(path)
      return path
    except UNREADABLE as e:
      reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
      logging.warning("checkpoint %s is unreadable (%s)%s", path, reason,
                      "; moved aside as .corrupt, trying the one before" if move_aside else "")
      if move_aside:
        for name in glob.glob(glob.escape(path) + ".*"):
          os.replace(name, name + ".corrupt")
        _forget_checkpoint(directory, path)
  if found:
    raise ValueError(f"no checkpoint in {directory} is readable (see the warnings above): move "
                     "the folder aside to start again")
  return None
