"""The best checkpoints survive CheckpointManager's rotation and switch atomically."""

import os

import pytest
import tensorflow as tf

from cyclegan import best_checkpoint


def test_auto_picks_the_most_telling_metric_available():
  assert best_checkpoint.choose_metric("auto", True, True)[0] == "psnr"
  assert best_checkpoint.choose_metric("auto", False, True)[0] == "kid"
  assert best_checkpoint.choose_metric("auto", False, False)[0] == "swd"
  assert best_checkpoint.choose_metric("fid", False, True) == ("fid", "chosen with --best_metric")


def test_better_follows_each_metrics_direction():
  record = lambda metric, value: {"metric": metric, "value": value}
  assert best_checkpoint.is_better("psnr", 17.0, None)
  assert best_checkpoint.is_better("psnr", 17.2, record("psnr", 17.0))
  assert not best_checkpoint.is_better("psnr", 16.9, record("psnr", 17.0))
  assert best_checkpoint.is_better("kid", 0.01, record("kid", 0.02))
  assert not best_checkpoint.is_better("swd", 9.0, record("swd", 8.0))
  assert best_checkpoint.is_better("swd", 9.0, record("psnr", 17.0))  # the metric changed
  assert not best_checkpoint.is_better("psnr", float("nan"), None)
  kid = {"metric": "kid", "value": 0.01, "inception": "fid2015"}
  assert not best_checkpoint.is_better("kid", 0.02, kid, "fid2015")
  assert best_checkpoint.is_better("kid", 0.02, kid, "keras")  # another scale


def _restored(prefix):
  variable = tf.Variable(0.0)
  tf.train.Checkpoint(v=variable).restore(prefix).assert_consumed()
  return float(variable.numpy())


@pytest.mark.parametrize("links", [True, False])
def test_each_directions_best_outlives_rotation_until_no_direction_holds_it(tmp_path,
                                                                          monkeypatch, links):
  if not links:  # a filesystem without hard links: copies
    monkeypatch.setattr(os, "link", lambda *args: (_ for _ in ()).throw(OSError("no links")))
  workdir = str(tmp_path)
  variable = tf.Variable(0.0)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable),
                                       os.path.join(workdir, "checkpoints"), max_to_keep=1)
  record = lambda step, value: {"step": step, "metric": "psnr", "value": value, "metrics": {}}

  def save(step):
    variable.assign(float(step))
    return manager.save(checkpoint_number=step)

  best_checkpoint.keep(workdir, save(2), {"a2b": record(2, 17.0), "b2a": record(2, 16.0)})
  best_checkpoint.keep(workdir, save(4), {"a2b": record(4, 17.5)})
  save(6)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-2.index"))  # rotated
  assert _restored(best_checkpoint.checkpoint_path(workdir, "b2a")) == 2.0
  assert _restored(best_checkpoint.checkpoint_path(workdir, "a2b")) == 4.0
  assert sorted(os.listdir(best_checkpoint.folder(workdir))) == ["best.json", "step-2", "step-4"]
  best_checkpoint.keep(workdir, save(8), {"b2a": record(8, 16.5), "a2b": record(8, 18.0)})
  assert sorted(os.listdir(best_checkpoint.folder(workdir))) == ["best.json", "step-8"]
  assert best_checkpoint.read(workdir)["a2b"]["checkpoint"] == "step-8/ckpt-8"
  assert _restored(best_checkpoint.checkpoint_path(workdir, "a2b")) == 8.0


def test_a_resume_from_an_earlier_step_forgets_the_later_bests(tmp_path):
  """Checkpoints after the resumed step are lost (moved aside, deleted): their bests go too,
  and a step of the same number later is linked again, not taken for the old one."""
  workdir = str(tmp_path)
  variable = tf.Variable(0.0)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable),
                                       os.path.join(workdir, "checkpoints"), max_to_keep=5)
  record = lambda step: {"step": step, "metric": "psnr", "value": float(step), "metrics": {}}
  for step, direction in ((2, "a2b"), (4, "b2a")):
    variable.assign(float(step))
    best_checkpoint.keep(workdir, manager.save(checkpoint_number=step), {direction: record(step)})
  assert best_checkpoint.forget_after(workdir, 2) == {"a2b": {**record(2),
                                                              "checkpoint": "step-2/ckpt-2"}}
  assert sorted(os.listdir(best_checkpoint.folder(workdir))) == ["best.json", "step-2"]
  variable.assign(40.0)  # another run's step 4
  best_checkpoint.keep(workdir, manager.save(checkpoint_number=4), {"b2a": record(4)})
  assert _restored(best_checkpoint.checkpoint_path(workdir, "b2a")) == 40.0
