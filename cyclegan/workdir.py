"""The layout of a training workdir, in one place for train, export and evaluate.

  <workdir>/config.json    the resolved config (`auto` kept as auto), for resume and export
  <workdir>/checkpoints/   tf.train.CheckpointManager's ckpt-<step> files
  <workdir>/tensorboard/   losses, learning rate, image grids, quality metrics
"""

import os

import tensorflow as tf

from cyclegan import config as config_lib


def config_path(workdir):
  return os.path.join(workdir, "config.json")


def checkpoint_dir(workdir):
  return os.path.join(workdir, "checkpoints")


def tensorboard_dir(workdir):
  return os.path.join(workdir, "tensorboard")


def load_config(workdir):
  """The config a workdir was trained with, or None for a new workdir."""
  path = config_path(workdir)
  return config_lib.make_config(config_lib.load_saved(path)) if os.path.exists(path) else None


def latest_checkpoint(workdir):
  return tf.train.latest_checkpoint(checkpoint_dir(workdir))
