"""Each alarm provoked on a tiny model, and none raised by a healthy one."""

import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cyclegan import alarms
from cyclegan import evaluation
from cyclegan import images as images_lib
from cyclegan import input_pipeline
from cyclegan import models
from cyclegan import runtime
from cyclegan import train_lib
from conftest import REPO, tiny_config, tiny_flags


def _translation(generator):
  return lambda images: images_lib.through_unit_range(generator, tf.constant(images))


def _flat(generator):
  """The generator painting one flat image whatever it gets: its last layer zeroed."""
  last = [layer for layer in generator.layers if layer.weights][-1]
  last.set_weights([np.zeros_like(w) for w in last.get_weights()])
  return generator


@pytest.fixture(scope="module")
def evaluator():
  config = tiny_config(pathlib.Path("/unused"), synthetic_test=16)
  domains = input_pipeline.load_domains(config, ("testA", "testB"))
  return evaluation.Evaluator(config, {"a": domains["testA"], "b": domains["testB"]})


def test_a_flat_generator_raises_collapse_the_identity_raises_identity_random_none(evaluator):
  generator = lambda: models.resnet_generator(ngf=4, n_blocks=1)
  values, _ = evaluator.heldout({"a2b": _translation(generator()),
                                 "b2a": _translation(_flat(generator()))})
  raised = alarms.from_evaluation(7, values)
  assert values["a2b_spread"] > 0.3 and values["b2a_spread"] < 1e-3
  assert list(raised) == ["collapse_b2a"] and "step 7" in raised["collapse_b2a"]
  values, _ = evaluator.heldout({"a2b": lambda images: images})
  assert values["a2b_change"] == 0
  assert list(alarms.from_evaluation(7, values)) == ["identity_a2b"]


def _losses(d, g):
  return {"d_a": d, "d_b": 0.25, "g_adv_b2a": g, "g_adv_a2b": 0.3}


def test_discriminator_wins_needs_the_whole_stretch():
  config = tiny_config(pathlib.Path("/unused"), log_every=10)
  watch = alarms.DiscriminatorWatch(config, total_steps=1000)
  assert watch.stretch == 100  # 10 logged steps; 5% of 1000 steps is less
  raised = [watch.update(step, _losses(0.01, 0.95)) for step in range(10, 200, 10)]
  assert [step for step, r in zip(range(10, 200, 10), raised) if r] == list(range(110, 200, 10))
  assert list(raised[-1]) == ["discriminator_wins_a"] and "for the last 100 steps" in raised[-1][
      "discriminator_wins_a"]
  assert not watch.update(200, _losses(0.2, 0.95))  # one healthy point breaks the stretch
  assert not watch.update(300, _losses(0.01, 0.95))
  vanilla = alarms.DiscriminatorWatch(tiny_config(pathlib.Path("/unused"), log_every=10, gan_mode="vanilla"),
                                      total_steps=1000)
  for step in range(10, 200, 10):  # LSGAN's "high" is not vanilla's
    assert not vanilla.update(step, _losses(0.01, 0.95))


def test_a_generator_that_cannot_learn_lets_the_discriminator_win(tmp_path, monkeypatch,
                                                                   caplog):
  """Only the generators' first bias is updated: the discriminators win within ~35 steps at
  lr 0.002 (measured: D's losses fall under 0.05 by step 20), and --stop_on_alarm stops the
  run there with a checkpoint of that step."""
  every_variable = train_lib.TrainState.generator_variables
  monkeypatch.setattr(train_lib.TrainState, "generator_variables",
                      property(lambda self: every_variable.fget(self)[:1]))
  config = tiny_config(tmp_path, max_steps=100, epochs=100, lr=0.002, checkpoint_every=1000,
                       stop_on_alarm=True)
  with caplog.at_level(logging.WARNING, logger="absl"):
    with pytest.raises(train_lib.TrainingError, match=r"step (\d+): stopped on the alarm") as e:
      train_lib.train(config)
  step = int(e.value.args[0].split(":")[0].split()[1])
  assert step < 100
  assert "discriminator A wins" in caplog.text or "discriminator B wins" in caplog.text
  assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")).endswith(
      f"ckpt-{step}")


def test_stop_on_alarm_from_the_command_is_one_line_and_keeps_the_checkpoints(tmp_path):
  """A run that starts from flat generators (a checkpoint prepared here) and cannot move
  (lr 1e-12) collapses: the command stops at its first evaluation with one line, status 2."""
  flags = tiny_flags(workdir=str(tmp_path / "w"), max_steps=8, checkpoint_every=2, lr=1e-12,
                     log_every=1, pool_size=3, export=False)
  config = runtime.resolve(tiny_config(tmp_path, workdir=str(tmp_path / "w")), 1)
  state = train_lib.create_state(config, 8)
  _flat(state.models["generator_a2b"])
  tf.train.CheckpointManager(state.checkpoint(), str(tmp_path / "w" / "checkpoints"), 3).save(0)
  done = subprocess.run([sys.executable, "-m", "cyclegan.train", *flags, "--stop_on_alarm"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert "alarm: the A->B outputs of the held-out images are nearly identical" in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: step 2: stopped on the alarm above (--stop_on_alarm)"), last
  assert (tmp_path / "w" / "checkpoints" / "ckpt-2.index").exists()
