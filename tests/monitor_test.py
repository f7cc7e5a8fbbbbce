"""A run's held-out evaluations on a tiny model: metrics, the best checkpoints, the page,
TensorBoard, export by --checkpoint, resume."""

import collections
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan import best_checkpoint
from cyclegan import config as config_lib
from cyclegan import export
from cyclegan import metrics
from cyclegan import monitor
from cyclegan import train_lib
from conftest import tiny_config


def _tags(workdir):
  tags = collections.defaultdict(set)
  for path in (pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags[value.tag].add(event.step)
  return tags


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """8 steps, evaluated at each checkpoint (every 2 steps: eval_every's default -1), one
  checkpoint kept by rotation."""
  tmp = tmp_path_factory.mktemp("run")
  config = tiny_config(tmp, max_steps=8, eval_every=-1, keep_checkpoints=1)
  train_lib.train(config)
  return config


def test_each_checkpoint_is_evaluated_and_logged(run):
  history = [json.loads(line) for line in
             open(os.path.join(run.workdir, "samples", "evaluations.jsonl"))]
  assert [r["step"] for r in history] == [2, 4, 6, 8]
  for key in ("a2b_psnr", "b2a_ssim", "a2b_l1", "a2b_swd", "b2a_swd", "cycle_l1_a",
              "cycle_l1_b", "a2b_spread", "b2a_change"):
    assert key in history[-1]["metrics"], key
  assert all(r["alarms"] == [] for r in history)
  tags = _tags(run.workdir)
  for tag in ("eval/a2b_psnr", "eval/b2a_psnr", "eval/cycle_l1_a", "eval/a2b_swd",
              "alarm/collapse_a2b", "alarm/identity_b2a"):
    assert tags[tag] == {2, 4, 6, 8}, tag
  assert tags["alarm/discriminator_wins_a"] == set(range(1, 9))
  page = open(os.path.join(run.workdir, "samples", "index.html")).read()
  for record in history:
    for path in record["grids"].values():
      assert path in page and os.path.exists(os.path.join(run.workdir, "samples", path))


def test_each_directions_best_is_kept_out_of_rotation_and_exported(run, tmp_path):
  history = {json.loads(line)["step"]: json.loads(line)["metrics"] for line in
             open(os.path.join(run.workdir, "samples", "evaluations.jsonl"))}
  best = best_checkpoint.read(run.workdir)
  for direction in ("a2b", "b2a"):
    want = max(history, key=lambda step: history[step][f"{direction}_psnr"])
    assert best[direction]["step"] == want and best[direction]["metric"] == "psnr"
    assert os.path.exists(best_checkpoint.checkpoint_path(run.workdir, direction) + ".index")
  assert sorted(os.listdir(os.path.join(run.workdir, "checkpoints"))) == [
      "checkpoint", "ckpt-8.data-00000-of-00001", "ckpt-8.index"]

  paths = export.export_from_workdir(run.workdir, str(tmp_path / "best"), which="best")
  generators, sources = export.restore_generators(run.workdir, "best")
  for direction, name in export.DIRECTIONS.items():
    record = json.load(open(os.path.join(paths[direction], "metrics.json")))
    assert record["step"] == best[direction]["step"] and record["is_best"]
    assert record["checkpoint"] == "best" and record["best_metric"] == "psnr"
    assert record["metrics"] == history[record["step"]]
    assert sources[name][0].endswith(f"ckpt-{record['step']}")
    loaded = tf.saved_model.load(paths[direction])
    for exported, restored in zip(loaded.generator_variables, generators[name].weights):
      assert (exported.numpy() == restored.numpy()).all()

  latest = export.export_from_workdir(run.workdir, str(tmp_path / "latest"), which="latest")
  record = json.load(open(os.path.join(latest["a2b"], "metrics.json")))
  assert record["step"] == 8 and record["metrics"] == history[8]
  step = best["b2a"]["step"]
  chosen = export.export_from_workdir(run.workdir, str(tmp_path / "step"), which=str(step))
  assert json.load(open(os.path.join(chosen["b2a"], "metrics.json")))["step"] == step
  with pytest.raises(ValueError, match="no checkpoint of step 3; it has steps .*8"):
    export.export_from_workdir(run.workdir, str(tmp_path / "x"), which="3")


def test_a_resumed_run_keeps_its_history_and_its_best(run, tmp_path):
  """Going on from step 8 to 12 adds evaluations 10 and 12 to the same page and best."""
  before = best_checkpoint.read(run.workdir)
  train_lib.train(run.replace(max_steps=12, epochs=3))
  steps = [json.loads(line)["step"] for line in
           open(os.path.join(run.workdir, "samples", "evaluations.jsonl"))]
  assert steps == [2, 4, 6, 8, 10, 12]
  after = best_checkpoint.read(run.workdir)
  for direction in after:
    assert after[direction]["step"] in (before[direction]["step"], 10, 12)


def test_eval_every_defaults_to_each_checkpoint_where_there_is_a_test_split(tmp_path):
  config = tiny_config(tmp_path, eval_every=-1, checkpoint_every=5)
  assert monitor.eval_every(config, {"trainA": 0, "trainB": 0, "testA": 0, "testB": 0}) == 5
  assert monitor.eval_every(config, {"trainA": 0, "trainB": 0}) == 0
  assert monitor.eval_every(config.replace(eval_every=3), {"trainA": 0, "trainB": 0}) == 3


def test_metrics_that_cannot_be_computed_are_one_line_errors(tmp_path, monkeypatch):
  for name in ("KERAS_HOME", "CYCLEGAN_HOME", "TORCH_HOME"):
    monkeypatch.setenv(name, str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="--best_metric kid needs Inception weights"):
    train_lib.train(tiny_config(tmp_path, max_steps=2, eval_every=-1, best_metric="kid"))
  with pytest.raises(config_lib.ConfigError, match="download .*pt_inception-2015-12-05"):
    train_lib.train(tiny_config(tmp_path, max_steps=2, eval_every=-1, inception="fid2015"))


def test_with_an_inception_the_best_is_picked_by_kid(tmp_path, monkeypatch):
  """Where Inception weights are found, a run without pairs (folders) computes KID and FID
  and KID picks the best. The features here are mean colours (InceptionV3 itself costs half
  a minute on this machine; metrics_test and fid_inception_test check it)."""
  monkeypatch.setattr(metrics, "inception", lambda which: (keras.Sequential(
      [keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D()]), "mean colour"))
  config = tiny_config(tmp_path, max_steps=2, eval_every=-1, dataset=str(tmp_path / "folder"))
  rng = np.random.default_rng(0)
  sizes = [(36, 36), (50, 41), (30, 45), (64, 90)]  # mixed, and sides not multiples of 4
  for split in ("trainA", "trainB", "testA", "testB"):
    os.makedirs(tmp_path / "folder" / split)
    for i, size in enumerate(sizes):
      Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(
          tmp_path / "folder" / split / f"{i}.png")
  train_lib.train(config)
  record = best_checkpoint.read(config.workdir)["a2b"]
  assert record["metric"] == "kid" and record["step"] == 2
  for key in ("a2b_kid", "a2b_fid", "b2a_kid", "a2b_swd"):
    assert key in record["metrics"], key
  assert "a2b_psnr" not in record["metrics"]  # folders have no pairs
  assert record["inception"] == "mean colour"
  grid = Image.open(os.path.join(config.workdir, "samples", "images", "step_00000002_a_to_b.png"))
  assert grid.size == (4 * 32, 3 * 32)  # each held-out image at crop_size


def test_auto_leaves_inception_out_where_the_data_has_ground_truth(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics, "inception", lambda which: ("a model", "keras"))
  config = tiny_config(tmp_path)
  assert monitor._inception(config, has_pairs=True)[0] is None
  assert monitor._inception(config.replace(best_metric="kid"), True)[0] == ("a model", "keras")
  assert monitor._inception(config.replace(inception="keras"), True)[0] == ("a model", "keras")
  assert monitor._inception(config, has_pairs=False)[0] == ("a model", "keras")
  assert monitor._inception(config.replace(inception="none"), False) == (None, "--inception none")
