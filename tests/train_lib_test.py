"""The train step and loop on tiny models: real steps, exact resume, fault handling."""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from cyclegan import input_pipeline
from cyclegan import train_lib
from cyclegan.config import ConfigError
from conftest import tiny_config


def _weights(workdir):
  """Every saved value of the latest checkpoint (weights, Adam slots, pools, step), by key."""
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def test_linear_decay_matches_the_reference_rule():
  schedule = train_lib.LinearDecay(1.0, steps_per_epoch=3, epochs=2, epochs_decay=3)
  got = [float(schedule(tf.constant(s))) for s in range(0, 15, 3)]
  # lr_l = 1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1), epoch counted from 0.
  want = [1 - max(0, e + 1 - 2) / 4 for e in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(schedule(tf.constant(5))) == float(schedule(tf.constant(3)))  # Per epoch.


def test_one_step_updates_every_network(tmp_path):
  config = tiny_config(tmp_path, max_steps=1, checkpoint_every=1)
  domains = input_pipeline.load_domains(config)
  state = train_lib.create_state(config, 8, [32, 32, 3])
  before = {k: [w.numpy().copy() for w in m.trainable_weights] for k, m in state.models.items()}
  step = train_lib.make_train_step(config, state, tf.distribute.get_strategy())
  values = step(next(iter(input_pipeline.train_dataset(config, domains))))
  assert set(values) >= {"g_adv_a2b", "g_adv_b2a", "cycle_a", "cycle_b", "identity_a",
                         "identity_b", "d_a", "d_b", "g_total", "d_total"}
  assert all(np.isfinite(float(v)) for v in values.values())
  for name, model in state.models.items():
    changed = [not np.array_equal(a, b.numpy()) for a, b in zip(before[name], model.trainable_weights)]
    assert all(changed), f"{name} did not update"
  assert int(state.step.numpy()) == 1 and int(state.pool_a.count.numpy()) == 1


def test_identity_off_drops_its_losses(tmp_path):
  config = tiny_config(tmp_path, lambda_identity=0.0, pool_size=0, gan_mode="vanilla")
  domains = input_pipeline.load_domains(config)
  state = train_lib.create_state(config, 8, [32, 32, 3])
  values = train_lib.make_train_step(config, state, tf.distribute.get_strategy())(
      next(iter(input_pipeline.train_dataset(config, domains))))
  assert "identity_a" not in values and "identity_b" not in values
  assert int(state.pool_a.count.numpy()) == 0


def test_one_step_through_the_real_tfds_builder(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "reachable", lambda url, timeout=5.0: True)
  config = tiny_config(tmp_path, dataset="monet2photo", tfds_data_dir=str(tmp_path / "tfds"),
                       max_steps=1)
  with tfds.testing.mock_data(num_examples=4):
    train_lib.train(config)
  assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")).endswith("ckpt-1")
  saved = json.load(open(os.path.join(config.workdir, "config.json")))
  assert saved["dataset"] == "monet2photo" and saved["ngf"] == 4


def test_resume_equals_an_uninterrupted_run(tmp_path):
  straight = tiny_config(tmp_path / "straight", max_steps=6, checkpoint_every=100)
  train_lib.train(straight)
  split = tiny_config(tmp_path / "split", max_steps=2, checkpoint_every=100)
  train_lib.train(split)
  train_lib.train(split.replace(max_steps=6))
  want, got = _weights(straight.workdir), _weights(split.workdir)
  assert want.keys() == got.keys() and len(want) > 100 and any("pool_a" in k for k in want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def test_lr_follows_the_schedule_across_a_restart(tmp_path):
  # 8 images, batch 1: 8 steps per epoch; epochs=1, decay=1 -> lr halves in the second epoch.
  config = tiny_config(tmp_path, max_steps=9, checkpoint_every=100)
  train_lib.train(config.replace(max_steps=3))
  with tf.distribute.get_strategy().scope():
    state = train_lib.create_state(config, 8, [32, 32, 3])
  state.checkpoint().restore(tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")))
  assert int(state.step.numpy()) == 3
  assert float(state.optimizer_g.learning_rate) == pytest.approx(config.lr)
  train_lib.train(config)
  state.checkpoint().restore(tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")))
  assert int(state.step.numpy()) == 9
  assert float(state.optimizer_g.learning_rate) == pytest.approx(config.lr / 2)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  real = train_lib.generator_losses

  def diverging(config, state, real_a, real_b):  # cycle_a becomes inf from step 3 on.
    terms, fake_a, fake_b = real(config, state, real_a, real_b)
    blowup = tf.where(state.step >= 2, np.inf, 1.0)
    terms["cycle_a"] = terms["cycle_a"] * blowup
    return terms, fake_a, fake_b

  monkeypatch.setattr(train_lib, "generator_losses", diverging)
  config = tiny_config(tmp_path, max_steps=5, checkpoint_every=1)
  with pytest.raises(train_lib.TrainingError, match=r"step 3: loss .* is (inf|nan)"):
    train_lib.train(config)
  latest = tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints"))
  assert latest.endswith("ckpt-2")
  assert all(np.isfinite(v).all() for v in _weights(config.workdir).values())


def test_mirrored_over_two_devices_trains_and_resumes(tmp_path):
  config = tiny_config(tmp_path, strategy="mirrored", batch_size=2, max_steps=2)
  train_lib.train(config)
  train_lib.train(config.replace(max_steps=3))
  assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")).endswith("ckpt-3")


def test_batch_must_split_evenly_across_replicas(tmp_path):
  with pytest.raises(ConfigError, match="multiple of the 2 replicas"):
    train_lib.train(tiny_config(tmp_path, strategy="mirrored", batch_size=3, max_steps=1))


def test_variable_size_preprocess_trains_with_the_pool_off(tmp_path):
  rng = np.random.default_rng(0)
  for domain, sizes in (("trainA", [(40, 28), (36, 52)]), ("trainB", [(44, 44), (32, 60), (48, 36)])):
    os.makedirs(tmp_path / "data" / domain)
    for i, (h, w) in enumerate(sizes):
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
          tmp_path / "data" / domain / f"{i}.png")
  config = tiny_config(tmp_path, dataset=str(tmp_path / "data"), preprocess="none", max_steps=4)
  train_lib.train(config)
  assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")).endswith("ckpt-4")
  with pytest.raises(ConfigError, match="use --batch_size 1"):
    train_lib.train(config.replace(batch_size=2, workdir=str(tmp_path / "w2")))


def test_eval_every_logs_quality_to_tensorboard(tmp_path):
  config = tiny_config(tmp_path, max_steps=4, eval_every=2)
  train_lib.train(config)
  tags = collections.defaultdict(set)
  for path in (tmp_path / "workdir" / "tensorboard").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags[value.tag].add(event.step)
  for tag in ("eval/cycle_l1_a", "eval/cycle_l1_b", "eval/a2b_l1", "eval/a2b_psnr", "eval/a2b_ssim"):
    assert tags[tag] == {2, 4}, tag
  assert tags["loss/cycle_a"] == {1, 2, 3, 4} and tags["learning_rate"] == {1, 2, 3, 4}


def test_two_replicas_of_batch_1_take_the_same_step_as_one_device_with_batch_2(tmp_path):
  """Losses are per-example sums over the global batch, so the all-reduced gradients equal the
  single-device ones up to float32 summation order, and so do the reported losses (a wrong
  scaling shows there: Adam's update is blind to a constant gradient scale).

  With the default epsilon, Adam divides each gradient by its own magnitude, so where the true
  gradient is ~0 (e.g. conv biases that feed an instance norm) round-off becomes steps of up to
  lr of either sign: we measured weight differences of 1e-6 to 3.4e-4 between two runs, which
  says nothing. With epsilon = 1 and lr = 1 the first step is ~lr * gradient, so the updated
  weights compare the gradients themselves. (A second step at lr 1 starts from weights moved
  by O(1e-2) and amplifies round-off chaotically: we measured up to 2.7e-4, so one step it is.)
  Three runs agreed to 1.3e-7 - 2.8e-7; a replica reading the wrong data changes gradients by
  ~1e-2. Bound: 1e-5.
  """
  config = tiny_config(tmp_path, pool_size=0, batch_size=2, lr=1.0, adam_epsilon=1.0)
  domains = input_pipeline.load_domains(config)
  batches = list(input_pipeline.train_dataset(config, domains).take(1).as_numpy_iterator())

  def run(strategy):
    with strategy.scope():
      state = train_lib.create_state(config, 8, None)
    step = train_lib.make_train_step(config, state, strategy)
    losses = []
    for batch in batches:  # The global batch of 2: split across replicas by the strategy.
      dataset = tf.data.Dataset.from_tensors(batch)
      values = step(next(iter(strategy.experimental_distribute_dataset(dataset))))
      losses.append({k: float(v) for k, v in values.items()})
    weights = {f"{k}/{w.path}": w.numpy() for k, m in state.models.items() for w in m.weights}
    return losses, weights

  single_losses, single = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
  mirrored_losses, mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
  for want, got in zip(single_losses, mirrored_losses):
    assert got == pytest.approx(want, rel=1e-5)
  worst = max((np.abs(single[k] - mirrored[k]).max(), k) for k in single)
  assert worst[0] <= 1e-5, worst
