"""The train step and loop on tiny models: real steps, exact resume, fault handling."""

import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from cyclegan import export
from cyclegan import input_pipeline
from cyclegan import kernels
from cyclegan import train_lib
from cyclegan.config import ConfigError
from conftest import REPO, load_tool, model_weights, run_steps, tiny_config


def _weights(workdir):
  """Every saved value of the latest checkpoint (weights, Adam slots, pools, step), by key."""
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def test_linear_decay_follows_the_reference_scheduler():
  """Against PyTorch's LambdaLR with the reference's rule, stepped at the end of every epoch
  as the reference's training loop did until 2020 (README, "The recipe")."""
  torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")
  torch_reference = load_tool("torch_reference")
  steps_per_epoch, epochs, epochs_decay = 3, 4, 5
  optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-4)
  scheduler = torch_reference.linear_scheduler(optimizer, epochs, epochs_decay)
  schedule = train_lib.LinearDecay(2e-4, steps_per_epoch, epochs, epochs_decay)
  step = 0
  for _ in range(epochs + epochs_decay):
    for _ in range(steps_per_epoch):
      assert float(schedule(tf.constant(step))) == pytest.approx(optimizer.param_groups[0]["lr"])
      step += 1
      optimizer.step()
    scheduler.step()
  assert float(schedule(tf.constant(step - 1))) == pytest.approx(2e-4 / (epochs_decay + 1))


def test_one_step_updates_every_network(tmp_path):
  config = tiny_config(tmp_path, max_steps=1, checkpoint_every=1)
  domains = input_pipeline.load_domains(config)
  state = train_lib.create_state(config, 8)
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


@pytest.fixture(scope="module")
def fp32_losses(tmp_path_factory):
  return _six_steps(tmp_path_factory.mktemp("fp32"), "fp32")[0]


def _six_steps(tmp_path, precision):
  """Losses of six steps from the same init and data, and the state after them."""
  config = tiny_config(tmp_path / precision, precision=precision)
  state = train_lib.create_state(config, 8)
  before = [w.numpy().copy() for m in state.models.values() for w in m.trainable_weights]
  step = train_lib.make_train_step(config, state, tf.distribute.get_strategy())
  batches = iter(input_pipeline.train_dataset(config, input_pipeline.load_domains(config)))
  losses = [{k: float(v) for k, v in step(next(batches)).items()} for _ in range(6)]
  after = [w.numpy() for m in state.models.values() for w in m.trainable_weights]
  return losses, state, [not np.array_equal(a, b) for a, b in zip(before, after)]


@pytest.mark.parametrize("precision,first_bound,bound", [("bf16", 2e-3, 1e-2), ("fp16", 2e-3, 0.1)])
def test_every_precision_trains_and_tracks_fp32(tmp_path, fp32_losses, precision, first_bound,
                                                bound):
  """Six steps against fp32's from the same weights and images.

  Measured over seeds 0-2, relative difference of g_total and d_total: the first step (the
  init weights, so forward precision only) bf16 <= 5e-4, fp16 <= 1e-4; later steps bf16 <=
  3e-3, fp16 <= 5.2e-2. fp16 drifts further because its loss scale starts at 2^15 and halves
  on every step whose gradients overflow: 1-3 of the first six updates are skipped, so its
  weights lag fp32's by those steps.
  """
  want = fp32_losses
  got, state, changed = _six_steps(tmp_path, precision)
  assert state.models["generator_a2b"].get_layer("stem_conv").compute_dtype == (
      "bfloat16" if precision == "bf16" else "float16")
  assert all(changed), "every weight moves"
  for i, (w, g) in enumerate(zip(want, got)):
    assert all(np.isfinite(list(g.values())))
    for key in ("g_total", "d_total"):
      assert abs(g[key] / w[key] - 1) <= (first_bound if i == 0 else bound), (i, key, g, w)


def test_fp16_skips_a_step_whose_gradients_overflow(tmp_path):
  config = tiny_config(tmp_path, precision="fp16")
  state = train_lib.create_state(config, 8)
  state.optimizer_g.dynamic_scale.assign(2.0**100)  # float16 gradients overflow at this scale
  state.optimizer_d.dynamic_scale.assign(2.0**8)  # and not at this one
  generator = [w.numpy().copy() for w in state.generator_variables]
  discriminator = [w.numpy().copy() for w in state.discriminator_variables]
  step = train_lib.make_train_step(config, state, tf.distribute.get_strategy())
  values = step(next(iter(input_pipeline.train_dataset(config, input_pipeline.load_domains(config)))))
  assert all(np.isfinite(float(v)) for v in values.values())
  assert float(state.optimizer_g.dynamic_scale) == 2.0**99
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(generator, state.generator_variables))
  assert float(state.optimizer_d.dynamic_scale) == 2.0**8
  assert not all(np.array_equal(a, b.numpy())
                 for a, b in zip(discriminator, state.discriminator_variables))
  workdir = train_lib.train(config.replace(max_steps=3))  # The loop, and an export, in fp16.
  assert export.export_from_workdir(workdir, config.export_dir)["a2b"].endswith("1")


def test_precision_is_passed_not_left_in_the_process(tmp_path):
  """A bf16 run, then an fp32 state in the same process: fp32, and Keras's global policy
  untouched throughout."""
  workdir = train_lib.train(tiny_config(tmp_path, precision="bf16", max_steps=1))
  export.export_from_workdir(workdir, str(tmp_path / "export"))
  assert keras.mixed_precision.global_policy().name == "float32"
  state = train_lib.create_state(tiny_config(tmp_path / "fp32", precision="fp32"), 8)
  for model in state.models.values():
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
  bf16 = train_lib.create_state(tiny_config(tmp_path / "bf16", precision="bf16"), 8)
  assert bf16.models["generator_a2b"].get_layer("stem_conv").compute_dtype == "bfloat16"
  assert keras.mixed_precision.global_policy().name == "float32"


def test_identity_off_drops_its_losses(tmp_path):
  config = tiny_config(tmp_path, lambda_identity=0.0, pool_size=0, gan_mode="vanilla")
  domains = input_pipeline.load_domains(config)
  state = train_lib.create_state(config, 8)
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


@pytest.mark.parametrize("strategy,batch_size", [("default", 1), ("mirrored", 2)])
def test_resume_equals_an_uninterrupted_run(tmp_path, strategy, batch_size):
  """Mirrored: each replica keeps its own pool, and the checkpoint must give each its own back."""
  run = lambda name, steps: tiny_config(tmp_path / name, max_steps=steps, checkpoint_every=100,
                                        strategy=strategy, batch_size=batch_size)
  # The straight run takes its steps 4 per call (1, 4, 1), the split one a call per step.
  straight = run("straight", 6).replace(log_every=100, image_every=100, steps_per_call=4)
  train_lib.train(straight)
  split = run("split", 2)
  train_lib.train(split)
  train_lib.train(split.replace(max_steps=6))
  assert tf.train.latest_checkpoint(os.path.join(split.workdir, "checkpoints")).endswith("ckpt-6")
  want, got = _weights(straight.workdir), _weights(split.workdir)
  assert want.keys() == got.keys() and len(want) > 100 and any("pool_a" in k for k in want)
  assert want["pool_a/.ATTRIBUTES/count"].tolist() == [3] * batch_size
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def test_lr_follows_the_schedule_across_a_restart(tmp_path):
  # 8 images, batch 1: 8 steps per epoch; epochs=1, decay=1 -> lr halves in the second epoch.
  config = tiny_config(tmp_path, max_steps=9, checkpoint_every=100)
  train_lib.train(config.replace(max_steps=3))
  with tf.distribute.get_strategy().scope():
    state = train_lib.create_state(config, 8)
  state.checkpoint().restore(tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")))
  assert int(state.step.numpy()) == 3
  assert float(state.optimizer_g.learning_rate) == pytest.approx(config.lr)
  train_lib.train(config)
  state.checkpoint().restore(tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")))
  assert int(state.step.numpy()) == 9
  assert float(state.optimizer_g.learning_rate) == pytest.approx(config.lr / 2)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  real, real_create_state, states = train_lib.generator_losses, train_lib.create_state, []
  monkeypatch.setattr(train_lib, "create_state",
                      lambda *args: states.append(real_create_state(*args)) or states[-1])

  def diverging(config, networks, real_a, real_b):  # cycle_a becomes inf from step 3 on.
    terms, fake_a, fake_b = real(config, networks, real_a, real_b)
    blowup = tf.where(states[-1].step >= 2, np.inf, 1.0)
    terms["cycle_a"] = terms["cycle_a"] * blowup
    return terms, fake_a, fake_b

  monkeypatch.setattr(train_lib, "generator_losses", diverging)
  # Calls of 1, 1 (to the checkpoint at 2), then 3 steps asked for (3..5): it stops after 3.
  config = tiny_config(tmp_path, max_steps=5, checkpoint_every=2, log_every=100,
                       image_every=100, steps_per_call=3)
  with pytest.raises(train_lib.TrainingError, match=r"step 3: loss .* is (inf|nan)"):
    train_lib.train(config)
  latest = tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints"))
  assert latest.endswith("ckpt-2")
  assert all(np.isfinite(v).all() for v in _weights(config.workdir).values())


def test_a_call_runs_to_the_next_step_that_logs_or_saves(tmp_path):
  config = tiny_config(tmp_path, max_steps=100, log_every=25, image_every=40, checkpoint_every=30,
                       steps_per_call=0)
  calls = lambda step, step_s: train_lib.steps_for_call(config, step, 100, step_s)
  assert calls(1, None) == 1  # No step time measured yet.
  assert calls(1, 0.01) == 24 and calls(25, 0.01) == 5 and calls(30, 0.01) == 10
  assert calls(1, 0.3) == 3  # About CALL_SECONDS of steps.
  assert calls(98, 0.001) == 2  # The last step.
  assert train_lib.steps_for_call(config.replace(steps_per_call=7), 1, 100, 0.001) == 7


def test_batch_must_split_evenly_across_replicas(tmp_path):
  with pytest.raises(ConfigError, match="multiple of the 2 replicas"):
    train_lib.train(tiny_config(tmp_path, strategy="mirrored", batch_size=3, max_steps=1))


def test_variable_size_preprocess_trains_with_the_pool(tmp_path):
  rng = np.random.default_rng(0)
  for domain, sizes in (("trainA", [(40, 28), (36, 52)]), ("trainB", [(44, 44), (32, 60), (48, 36)])):
    os.makedirs(tmp_path / "data" / domain)
    for i, (h, w) in enumerate(sizes):
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
          tmp_path / "data" / domain / f"{i}.png")
  config = tiny_config(tmp_path, dataset=str(tmp_path / "data"), preprocess="none", max_steps=4)
  train_lib.train(config)
  assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")).endswith("ckpt-4")
  saved = _weights(config.workdir)
  assert saved["pool_a/.ATTRIBUTES/count"].tolist() == [3]  # Full (pool_size 3), sizes mixed.
  assert len({tuple(s) for s in saved["pool_b/.ATTRIBUTES/shapes"][0]}) > 1
  with pytest.raises(ConfigError, match="use --batch_size 1"):
    train_lib.train(config.replace(batch_size=2, workdir=str(tmp_path / "w2")))


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

  Noise images, not the built-in dataset's: its flat regions normalise to one value each, and
  where that value is within round-off of zero a whole region sits on a ReLU's kink. A replica
  normalises its one image with another kernel than one device does two (the norm's batch-of-1
  form), so such a region can switch sides: 1.9e-3 on one kernel, which says nothing either.

  With each network compiled by XLA (--jit_compile, --jit_scope networks) the two replicas
  take that step too: the programs run per replica, the all-reduce is TensorFlow's.
  """
  config = tiny_config(tmp_path, pool_size=0, batch_size=2, lr=1.0, adam_epsilon=1.0)
  rng = np.random.default_rng(0)
  noise = lambda: rng.uniform(-1, 1, (2, config.crop_size, config.crop_size, 3)).astype(np.float32)
  batches = [{"a": noise(), "b": noise()}]

  def run(strategy, config=config):  # The global batch of 2: split across replicas.
    losses, state = run_steps(config, batches, strategy)
    return losses, model_weights(state)

  single_losses, single = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
  for jit in (False, True):
    mirrored_losses, mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                                    config.replace(jit_compile=jit))
    for want, got in zip(single_losses, mirrored_losses):
      assert got == pytest.approx(want, rel=1e-5), jit
    worst = max((np.abs(single[k] - mirrored[k]).max(), k) for k in single)
    assert worst[0] <= 1e-5, (jit, worst)


def _where_the_step_convolves(config):
  """(calls of XLA-compiled functions, convolutions outside them) in the traced step's graph,
  function bodies included."""
  state = train_lib.create_state(config, 8)
  step = train_lib.make_train_step(config, state, tf.distribute.get_strategy())
  spec = tf.TensorSpec((1, config.crop_size, config.crop_size, 3))
  graph = step.get_concrete_function({"a": spec, "b": spec}).graph.as_graph_def()
  library = {f.signature.name: f for f in graph.library.function}

  def count(nodes):
    calls = convolutions = 0
    for node in nodes:
      name = node.attr["f"].func.name if "PartitionedCall" in node.op else node.op
      if name in library and library[name].attr["_XlaMustCompile"].b:
        calls += 1
      elif name in library:
        inner = count(library[name].node_def)
        calls, convolutions = calls + inner[0], convolutions + inner[1]
      else:
        convolutions += node.op.startswith("Conv2D")
    return calls, convolutions

  return count(graph.node)


@pytest.mark.parametrize("model", ["cycle_gan", "fastcut"])
def test_jit_scope_says_what_xla_compiles(tmp_path, model):
  """Traced, every convolution runs as a TensorFlow op; by networks each network's forward and
  backward are XLA programs and no convolution is left outside them; the step, one program.
  (CycleGAN's step calls 24 programs by networks: 12 network calls, each forward and back.)"""
  config = tiny_config(tmp_path, model=model, n_blocks=5)
  calls, convolutions = _where_the_step_convolves(config)
  assert calls == 0 and convolutions > 20
  calls, convolutions = _where_the_step_convolves(config.replace(jit_compile=True))
  assert calls >= 8 and convolutions == 0
  assert _where_the_step_convolves(config.replace(jit_compile=True, jit_scope="step")) == (1, 0)
  assert kernels.enabled()  # Plain convolutions for XLA's tracing only.


def test_the_whole_step_compiled_takes_several_replicas_only_on_gpus_or_tpus(tmp_path):
  """XLA compiles no collectives for CPUs: --jit_scope step with two CPU replicas is one line
  that names what works (--jit_scope networks keeps the collectives out of XLA)."""
  config = tiny_config(tmp_path, jit_compile=True, jit_scope="step", batch_size=2)
  with pytest.raises(ConfigError, match="XLA compiles no collectives for CPUs; use --jit_scope "
                                        "networks"):
    train_lib.train(config, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))


def test_the_compiled_steps_with_the_pool_equal_the_traced_one(tmp_path):
  """--jit_compile with the image pool, both --jit_scope: 5 steps, compiled by XLA and not,
  from the same weights and batches, take the same choices in the pool (filled by step 2,
  swapping after) and the same steps. XLA's CPU convolutions sum in another order than
  oneDNN's, so values differ by round-off: with adam_epsilon 1 an update is ~lr * gradient (no
  amplification of ~0 gradients, see the test above) and 5 steps stay within 1e-5 (measured:
  losses within 2.9e-7 by networks and 7.4e-7 whole, weights within 1.5e-8); a pool that
  stored or returned another image than the traced one, or a step that read a stale pool, is
  off by O(1). Noise images, for the reason the test above gives. (Mirrored replicas on this
  machine's two logical CPUs cannot run the whole step compiled: XLA compiles no collectives
  for CPUs. By networks they can: the test above, and multi_worker_test's two workers.)"""
  config = tiny_config(tmp_path, pool_size=2, lr=0.01, adam_epsilon=1.0)
  rng = np.random.default_rng(0)
  noise = lambda: rng.uniform(-1, 1, (1, config.crop_size, config.crop_size, 3))
  batches = [{"a": noise().astype(np.float32), "b": noise().astype(np.float32)}
             for _ in range(5)]

  def run(**jit):
    losses, state = run_steps(config.replace(**jit), batches)
    weights = model_weights(state)
    name = "-".join(map(str, jit.values()))
    pools = [tf.train.Checkpoint(pool=pool).save(str(tmp_path / f"{name}{i}" / "c"))
             for i, pool in enumerate((state.pool_a, state.pool_b))]
    readers = [tf.train.load_checkpoint(path) for path in pools]
    return losses, weights, [{k: r.get_tensor(k) for k in r.get_variable_to_shape_map()
                              if k.startswith("pool")} for r in readers]

  traced = run(jit_compile=False)
  for scope in ("networks", "step"):
    compiled = run(jit_compile=True, jit_scope=scope)
    for want, got in zip(traced[0], compiled[0]):
      assert got == pytest.approx(want, rel=1e-5), scope
    worst = max((np.abs(traced[1][k] - compiled[1][k]).max(), k) for k in traced[1])
    assert worst[0] <= 1e-5, (scope, worst)
    for want, got in zip(traced[2], compiled[2]):
      assert want["pool/.ATTRIBUTES/count"].tolist() == [2]
      np.testing.assert_array_equal(got["pool/.ATTRIBUTES/shapes"],
                                    want["pool/.ATTRIBUTES/shapes"])
      np.testing.assert_allclose(got["pool/.ATTRIBUTES/pixels"],
                                 want["pool/.ATTRIBUTES/pixels"], atol=1e-5, err_msg=scope)


# Our networks and losses by the reference's names (tools/torch_reference.py): G_A maps A->B and
# D_A judges domain B, so our discriminator_b is its D_A.
REFERENCE_NETWORKS = {"generator_a2b": "G_A", "generator_b2a": "G_B",
                      "discriminator_b": "D_A", "discriminator_a": "D_B"}
REFERENCE_LOSSES = {"g_adv_a2b": "G_A", "g_adv_b2a": "G_B", "cycle_a": "cycle_A",
                    "cycle_b": "cycle_B", "identity_a": "idt_A", "identity_b": "idt_B",
                    "g_total": "G", "d_b": "D_A", "d_a": "D_B"}


def _copy_to_torch(model, net):
  """Conv by conv in order; TF kernels (kh, kw, in, out) -> PyTorch (out, in, kh, kw), and
  transposed-conv kernels (kh, kw, out, in) -> (in, out, kh, kw): the same permutation."""
  import torch
  layers = [layer for layer in model.layers if layer.weights]
  modules = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
  assert len(layers) == len(modules)
  for layer, module in zip(layers, modules):
    kernel, bias = layer.get_weights()
    module.weight.data.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    module.bias.data.copy_(torch.from_numpy(bias))


def _torch_weights(net):
  """As _copy_to_torch's inverse: the network's tensors in our layout and order."""
  import torch
  out = []
  for m in net.modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
      out += [m.weight.detach().numpy().transpose(2, 3, 1, 0), m.bias.detach().numpy()]
  return out


@pytest.mark.parametrize("gan_mode", ["lsgan", "vanilla"])
def test_one_iteration_equals_the_reference(tmp_path, gan_mode):
  """Our train step against the reference's optimize_parameters, from the same weights and
  images, with plain SGD at lr 1 on both sides so that each weight's change is minus its
  gradient: every loss term and the gradients of all four networks must agree.

  The reference runs in float64, as the exact answer. Measured: loss terms within 2e-6
  relative (bound 2e-5). Each network's change, as a relative L2 norm: PyTorch's float32
  within 1.3e-5, ours within 4.8e-3 (generators) and 1.2e-5 (discriminators); bound 2e-2.
  Ours is further off because the two float32 forwards differ by ~1e-6, and a ReLU input
  that close to 0 takes the other branch in one of them: one such pixel after up0_norm moved
  one channel's input gradient by 7.6%, and everything upstream of it with it.
  What the bounds catch (each checked by breaking the step): identity_a computed with the
  other generator (identity_a off by 1.4e-2), a fake sent to the wrong discriminator
  (g_adv_a2b off by 0.27-0.81), a generator step that also moves the discriminators (d_a,
  d_b off by 4e4, discriminator changes by 3e3).
  """
  torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")
  torch_reference = load_tool("torch_reference")
  config = tiny_config(tmp_path, ngf=8, ndf=8, n_blocks=2, n_layers_d=3, crop_size=64,
                       load_size=72, synthetic_size=72, pool_size=0, gan_mode=gan_mode)
  state = train_lib.create_state(config, 8)
  state.optimizer_g, state.optimizer_d = keras.optimizers.SGD(1.0), keras.optimizers.SGD(1.0)
  state.optimizer_g.build(state.generator_variables)
  state.optimizer_d.build(state.discriminator_variables)
  before = {k: [w.numpy().copy() for w in m.weights] for k, m in state.models.items()}
  batch = next(iter(input_pipeline.train_dataset(config, input_pipeline.load_domains(config))))

  def reference(dtype):
    model = torch_reference.CycleGAN(
        config.ngf, config.n_blocks, config.ndf, config.n_layers_d, gan_mode, pool_size=0,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    for ours, theirs in REFERENCE_NETWORKS.items():
      getattr(model, theirs).to(dtype)
      _copy_to_torch(state.models[ours], getattr(model, theirs))
    to_nchw = lambda x: torch.from_numpy(x.numpy().transpose(0, 3, 1, 2).copy()).to(dtype)
    losses = model.optimize_parameters(to_nchw(batch["a"]), to_nchw(batch["b"]))
    return losses, {k: [a - b for a, b in zip(_torch_weights(getattr(model, t)), before[k])]
                    for k, t in REFERENCE_NETWORKS.items()}

  exact_losses, exact = reference(torch.float64)
  _, torch32 = reference(torch.float32)
  ours = train_lib.make_train_step(config, state, tf.distribute.get_strategy())(batch)
  for name, ref_name in REFERENCE_LOSSES.items():
    assert float(ours[name]) == pytest.approx(exact_losses[ref_name], rel=2e-5), name
  for name, model in state.models.items():
    change = [w.numpy() - b for w, b in zip(model.weights, before[name])]
    norm = lambda tensors: np.sqrt(sum(np.sum(np.square(t)) for t in tensors))
    scale = norm(exact[name])
    error = lambda got: norm([g - e for g, e in zip(got, exact[name])]) / scale
    assert error(torch32[name]) <= 1e-4 and error(change) <= 2e-2, (name, error(change))


def test_fused_adam_updates_as_keras_adam():
  """Same variables and arithmetic as keras.optimizers.Adam, one kernel per variable."""
  rng = np.random.default_rng(0)
  gradients = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
  results = []
  for optimizer_class in (keras.optimizers.Adam, train_lib.FusedAdam):
    weights = keras.Variable(np.ones((3, 4), np.float32))
    optimizer = optimizer_class(learning_rate=0.01, beta_1=0.5, beta_2=0.999, epsilon=1e-8)
    optimizer.build([weights])
    step = tf.function(lambda g: optimizer.apply([g], [weights]))
    for gradient in gradients:
      step(tf.constant(gradient))
    results.append([weights.numpy(), optimizer._momentums[0].numpy(),
                    optimizer._velocities[0].numpy()])
  assert np.abs(results[0][0] - 1).max() > 0.01  # it moved
  for want, got in zip(*results):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _checkpoint_files(config, step):
  return sorted(glob.glob(os.path.join(config.workdir, "checkpoints", f"ckpt-{step}.*")))


def test_a_truncated_latest_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
  """As a disk filled or a preempted machine leaves it: the run warns, moves it aside (never
  deletes it) and goes on from the newest readable one."""
  config = tiny_config(tmp_path, max_steps=4, checkpoint_every=2)
  train_lib.train(config)
  data = next(f for f in _checkpoint_files(config, 4) if ".data-" in f)
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  with caplog.at_level(logging.INFO, logger="absl"):
    train_lib.train(tiny_config(tmp_path, max_steps=6, checkpoint_every=2))
  assert re.search(r"checkpoint \S+ckpt-4 is unreadable \(.+\); moved aside", caplog.text)
  assert re.search(r"resumed from \S+ckpt-2\b", caplog.text)
  assert "deprecated" not in caplog.text
  corrupt = [f for f in _checkpoint_files(config, 4) if f.endswith(".corrupt")]
  assert len(corrupt) == 2 and os.path.getsize(data + ".corrupt") < os.path.getsize(data)
  assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")).endswith("ckpt-6")
  assert export.restore_generators(config.workdir)[1]["generator_a2b"][0].endswith("ckpt-6")


def test_a_full_disk_is_one_line_and_the_next_run_resumes(tmp_path):
  """A real full disk: the checkpoints folder on a small tmpfs, filled after the first save."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  config = tiny_config(tmp_path, max_steps=2, checkpoint_every=2)
  disk = os.path.join(config.workdir, "checkpoints")
  os.makedirs(disk)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk]).returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    train_lib.train(config)
    free = os.statvfs(disk)
    with open(os.path.join(disk, "filler"), "wb") as f:
      f.write(b"\0" * (free.f_bavail * free.f_frsize - 4096))  # a page left: no checkpoint fits
    done = subprocess.run(
        [sys.executable, "-m", "cyclegan.train", "--workdir", config.workdir, "--max_steps", "4",
         "--noexport"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and "step 4: saving a checkpoint failed" in errors[0], errors
    assert "(No space left on device)" in errors[0] and "ckpt-2 (step 2)" in errors[0]
    assert not glob.glob(os.path.join(disk, "*_temp*"))  # the failed save's folder is gone
    os.remove(os.path.join(disk, "filler"))
    train_lib.train(tiny_config(tmp_path, max_steps=4, checkpoint_every=2))
    assert tf.train.latest_checkpoint(disk).endswith("ckpt-4")
  finally:
    subprocess.run(["umount", "-l", disk])


def test_ctrl_c_during_a_save_waits_for_it(tmp_path, monkeypatch):
  """Ctrl-C as each save starts (the second one while the interrupted run saves): the
  checkpoint is written whole, then the run stops."""
  config = tiny_config(tmp_path, max_steps=2, checkpoint_every=2)
  save = tf.train.CheckpointManager.save

  def interrupted_save(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return save(self, *args, **kwargs)

  monkeypatch.setattr(tf.train.CheckpointManager, "save", interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(config)
  checkpoints = os.path.join(config.workdir, "checkpoints")
  assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-2")
  assert not glob.glob(os.path.join(checkpoints, "*_temp*"))
