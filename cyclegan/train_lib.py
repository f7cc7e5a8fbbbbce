"""The train step, the training loop, checkpoints and summaries.

A CycleGAN iteration is the reference's: both generators update with the discriminators frozen,
then both discriminators update on real images and on fakes from the image pools. CUT's and
FastCUT's is cut_lib's. The step runs per replica under `strategy.run`; each loss is summed per
example and divided by the global batch, so one device with batch 2 and two devices with batch
1 take the same step.
"""

import contextlib
import dataclasses
import functools
import glob
import hashlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cyclegan import cli
from cyclegan import config as config_lib
from cyclegan import convert_torch
from cyclegan import cut_lib
from cyclegan import cut_models
from cyclegan import runtime
from cyclegan import seeds
from cyclegan import workdir as workdir_lib
from cyclegan import image_pool
from cyclegan import input_pipeline
from cyclegan import losses
from cyclegan import models
from cyclegan import monitor as monitor_lib
from cyclegan import quiet
from cyclegan import xla


class TrainingError(cli.UserError, RuntimeError):
  """Training cannot go on; the message names the step and says what to do."""


@keras.saving.register_keras_serializable(package="cyclegan")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
  """The reference's `linear` policy: constant for `epochs`, then linearly to lr/(decay+1)."""

  def __init__(self, lr, steps_per_epoch, epochs, epochs_decay):
    self.lr, self.steps_per_epoch = lr, steps_per_epoch
    self.epochs, self.epochs_decay = epochs, epochs_decay

  def __call__(self, step):
    epoch = tf.cast(step // self.steps_per_epoch, tf.float32)
    past = tf.maximum(0.0, epoch + 1.0 - self.epochs)
    return self.lr * (1.0 - past / (self.epochs_decay + 1.0))

  def get_config(self):
    return dict(lr=self.lr, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                epochs_decay=self.epochs_decay)


@dataclasses.dataclass
class TrainState:
  """Everything a checkpoint holds."""
  models: dict
  optimizer_g: keras.optimizers.Optimizer
  optimizer_d: keras.optimizers.Optimizer
  pool_a: image_pool.ImagePool
  pool_b: image_pool.ImagePool
  step: tf.Variable

  def checkpoint(self):
    return tf.train.Checkpoint(**self.models, optimizer_g=self.optimizer_g,
                               optimizer_d=self.optimizer_d, pool_a=self.pool_a,
                               pool_b=self.pool_b, step=self.step)

  @property
  def generator_variables(self):
    """The generators' (and CUT's patch heads'): what the generator loss updates."""
    return [v for name, model in sorted(self.models.items())
            if not name.startswith("discriminator") for v in model.trainable_variables]

  @property
  def discriminator_variables(self):
    return [v for name, model in sorted(self.models.items())
            if name.startswith("discriminator") for v in model.trainable_variables]


def learning_rate_schedule(config, steps_per_epoch):
  return LinearDecay(config.lr, steps_per_epoch, config.epochs, config.epochs_decay)


@keras.saving.register_keras_serializable(package="cyclegan")
class FusedAdam(keras.optimizers.Adam):
  """Keras's Adam, same variables and arithmetic, each variable's update one fused TF kernel
  (ResourceApplyAdam) instead of ~38 ops: the step's graph had 4,400 of its 17,600 ops in
  the optimizers, all traced in Python and instantiated before the first step."""

  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    # What every variable's update shares, made once per step rather than once per variable
    # (~1,000 ops fewer in the step's graph), passed to update_step in learning_rate's place.
    step = tf.cast(self.iterations + 1, tf.float32)
    constant = lambda value: tf.constant(value, tf.float32)
    shared = dict(beta1_power=tf.pow(constant(self.beta_1), step),
                  beta2_power=tf.pow(constant(self.beta_2), step),
                  lr=tf.cast(learning_rate, tf.float32), beta1=constant(self.beta_1),
                  beta2=constant(self.beta_2), epsilon=constant(self.epsilon))
    super()._backend_update_step(grads, trainable_variables, shared)

  def update_step(self, gradient, variable, shared):
    index = self._get_variable_index(variable)
    def local(v):  # the tf.Variable on this device (the update runs once per replica device)
      v = v.value if isinstance(v, keras.Variable) else v
      return v._get_on_device_or_primary() if hasattr(v, "_get_on_device_or_primary") else v
    dtype = variable.dtype
    tf.raw_ops.ResourceApplyAdam(
        var=local(variable).handle, m=local(self._momentums[index]).handle,
        v=local(self._velocities[index]).handle, grad=tf.cast(gradient, dtype),
        **{k: tf.cast(v, dtype) for k, v in shared.items()})


def _optimizer(config, steps_per_epoch):
  optimizer = FusedAdam(learning_rate_schedule(config, steps_per_epoch),
                        beta_1=config.beta1, beta_2=config.beta2, epsilon=config.adam_epsilon)
  if config.precision == "fp16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def create_state(config, steps_per_epoch):
  """Builds models, optimizers and pools; call inside the strategy's scope.

  config.precision must be resolved (runtime.resolve), not `auto`.
  """
  keras.utils.set_random_seed(config.seed)
  # Fixed-size crops: the pool's storage has a fixed shape, which XLA compiles.
  crops = [config.crop_size, config.crop_size, 3] if input_pipeline.fixed_size(config) else None
  state = TrainState(
      models=models.build_models(config) if config.model == "cycle_gan" else
      cut_lib.build_networks(config),
      optimizer_g=_optimizer(config, steps_per_epoch),
      optimizer_d=_optimizer(config, steps_per_epoch),
      pool_a=image_pool.ImagePool(config.pool_size, crops, name="pool_a"),
      pool_b=image_pool.ImagePool(config.pool_size, crops, name="pool_b"),
      step=tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA))
  # Slots exist before a restore, so that restoring is complete and checkable.
  state.optimizer_g.build(state.generator_variables)
  state.optimizer_d.build(state.discriminator_variables)
  return state


def generator_losses(config, networks, real_a, real_b):
  """Generator-side forward pass; returns per-example losses and the fakes."""
  g = networks
  fake_b = g["generator_a2b"](real_a, training=True)
  rec_a = g["generator_b2a"](fake_b, training=True)
  fake_a = g["generator_b2a"](real_b, training=True)
  rec_b = g["generator_a2b"](fake_a, training=True)
  terms = {
      "g_adv_a2b": losses.adversarial_loss(g["discriminator_b"](fake_b, training=True), True,
                                           config.gan_mode),
      "g_adv_b2a": losses.adversarial_loss(g["discriminator_a"](fake_a, training=True), True,
                                           config.gan_mode),
      "cycle_a": config.lambda_a * losses.l1_loss(rec_a, real_a),
      "cycle_b": config.lambda_b * losses.l1_loss(rec_b, real_b),
  }
  if config.lambda_identity > 0:
    terms["identity_a"] = config.lambda_b * config.lambda_identity * losses.l1_loss(
        g["generator_a2b"](real_b, training=True), real_b)
    terms["identity_b"] = config.lambda_a * config.lambda_identity * losses.l1_loss(
        g["generator_b2a"](real_a, training=True), real_a)
  return terms, fake_a, fake_b


def _minimize(optimizer, tape, scaled_loss, variables):
  """One update from a loss already passed through `optimizer.scale_loss` inside the tape.

  For fp16 that scale is the LossScaleOptimizer's: it unscales the gradients and, when they
  are not finite, skips the update and lowers the scale.
  """
  optimizer.apply(tape.gradient(scaled_loss, variables), variables)


def _distributed_step(config, state, strategy):
  """One step on one distributed batch (to be traced): the global mean of each loss."""
  global_batch = config.batch_size

  def average(per_example):
    # tf.nn.compute_average_loss's arithmetic without its 15 ops of argument checks per loss.
    return tf.reduce_sum(per_example) / global_batch

  def replica_seed(step):
    """This step's and replica's seed: the randomness of a step, whatever the device count."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return seeds.fold_in(tf.stack([tf.constant(config.seed, tf.int64), step]), replica)

  networks = xla.networks_for_step(config, state.models)
  if config.model != "cycle_gan":
    encoders = xla.networks_for_step(
        config, cut_lib.build_encoders(state.models["generator_a2b"]))

  def cut_replica_step(batch, step):
    return cut_lib.replica_step(config, networks, encoders, state.optimizer_g,
                                state.optimizer_d, batch["a"], batch["b"], replica_seed(step),
                                global_batch)

  def replica_step(batch, step):
    real_a, real_b = batch["a"], batch["b"]
    with tf.GradientTape() as tape:
      terms, fake_a, fake_b = generator_losses(config, networks, real_a, real_b)
      g_loss = average(tf.add_n(list(terms.values())))
      scaled_g_loss = state.optimizer_g.scale_loss(g_loss)
    _minimize(state.optimizer_g, tape, scaled_g_loss, state.generator_variables)

    seed = replica_seed(step)
    pooled_b = state.pool_b.query(fake_b, seeds.fold_in(seed, 0))
    pooled_a = state.pool_a.query(fake_a, seeds.fold_in(seed, 1))
    # training=True: the same numbers, and the training routes of models.Conv2D.
    d_a = functools.partial(networks["discriminator_a"], training=True)
    d_b = functools.partial(networks["discriminator_b"], training=True)
    with tf.GradientTape() as tape:
      d_terms = {
          "d_a": losses.discriminator_loss(d_a(real_a), d_a(tf.stop_gradient(pooled_a)),
                                           config.gan_mode),
          "d_b": losses.discriminator_loss(d_b(real_b), d_b(tf.stop_gradient(pooled_b)),
                                           config.gan_mode),
      }
      d_loss = average(d_terms["d_a"] + d_terms["d_b"])
      scaled_d_loss = state.optimizer_d.scale_loss(d_loss)
    _minimize(state.optimizer_d, tape, scaled_d_loss, state.discriminator_variables)
    out = {k: average(v) for k, v in {**terms, **d_terms}.items()}
    out["g_total"], out["d_total"] = g_loss, d_loss
    return out

  replica_fn = xla.replica_step(
      config, replica_step if config.model == "cycle_gan" else cut_replica_step)

  def train_step(batch):
    with xla.tracing(config):
      per_replica = strategy.run(replica_fn, args=(batch, state.step.read_value()))
    state.step.assign_add(1)
    return {k: tf.cast(strategy.reduce("SUM", v, axis=None), tf.float32)
            for k, v in per_replica.items()}

  return train_step


def make_train_step(config, state, strategy):
  """A tf.function taking one distributed batch; returns the global mean of each loss."""
  return tf.function(_distributed_step(config, state, strategy), reduce_retracing=True,
                     autograph=False)


def loss_names(config):
  """The keys of a step's losses."""
  if config.model != "cycle_gan":
    return ["g_gan", "nce"] + (["nce_y"] if config.nce_idt else []) + ["g_total", "d_total"]
  generator = ["g_adv_a2b", "g_adv_b2a", "cycle_a", "cycle_b"]
  identity = ["identity_a", "identity_b"] if config.lambda_identity > 0 else []
  return generator + identity + ["d_a", "d_b", "g_total", "d_total"]


def make_train_loop(config, state, strategy):
  """A tf.function (iterator, steps) -> (losses of the last step run, steps run).

  Runs up to `steps` steps in one call, with no host round trip between them: a GPU's step
  takes milliseconds, and a call per step would keep it waiting on Python. It stops right
  after a step whose losses are not all finite, so that step is the last one run and the
  caller can report it.
  """
  train_step = _distributed_step(config, state, strategy)

  @tf.function(autograph=False)
  def train_steps(iterator, steps):
    def step(done, finite, values):
      del finite, values
      values = train_step(next(iterator))
      return done + 1, tf.reduce_all([tf.math.is_finite(v) for v in values.values()]), values

    zeros = {name: tf.constant(0.0) for name in loss_names(config)}
    done, _, values = tf.while_loop(
        lambda done, finite, _: tf.logical_and(done < steps, finite), step,
        (tf.constant(0), tf.constant(True), zeros))
    return values, done

  return train_steps


def make_train_calls(config, state, strategy):
  """(calls, trace): calls(iterator, steps) -> (losses of the last step run, steps run), by
  make_train_loop where several steps per call pay (runtime.multi_step_calls), else one step
  per call; trace(iterator) traces what calls runs on such an iterator, running no step (it
  may take a batch: an element_spec can lose the batch size that the pool needs)."""
  if runtime.multi_step_calls(config):
    loop = make_train_loop(config, state, strategy)
    return loop, lambda iterator: loop.get_concrete_function(
        iterator, tf.TensorSpec([], tf.int32))
  train_step = make_train_step(config, state, strategy)
  return (lambda iterator, steps: (train_step(next(iterator)), 1),
          lambda iterator: train_step.get_concrete_function(next(iterator)))


def total_steps(config, steps_per_epoch):
  scheduled = (config.epochs + config.epochs_decay) * steps_per_epoch
  return min(config.max_steps, scheduled) if config.max_steps else scheduled


def _format_duration(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


class _Summaries:
  """TensorBoard: scalars, and the A, A->B, A->B->A / B, B->A, B->A->B grids."""

  def __init__(self, config, state, domains, logdir):
    self.writer = tf.summary.create_file_writer(logdir) if logdir else tf.summary.create_noop_writer()
    self.samples_a = input_pipeline.sample_images(domains.get("testA", domains["trainA"]), config)
    self.samples_b = input_pipeline.sample_images(domains.get("testB", domains["trainB"]), config)
    # Each generator traced once and called twice: the first grid took 1.0-1.7 s instead of
    # 2.7 s with all four passes traced in one function (the built-in default's model).
    self.a2b, self.b2a = (tf.function(state.models[name], autograph=False)
                          if name in state.models else None
                          for name in ("generator_a2b", "generator_b2a"))

  def scalars(self, step, values, prefix=""):
    with self.writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(prefix + name, value)

  def images(self, step):
    as_rows = lambda *xs: tf.concat([tf.concat(tf.unstack(tf.cast(x, tf.float32)), 1) for x in xs], 0)
    fake_b = self.a2b(self.samples_a)
    if self.b2a is None:  # CUT: A and A->B
      with self.writer.as_default(step=step):
        tf.summary.image("a_to_b", (as_rows(self.samples_a, fake_b)[None] + 1) / 2, step=step)
      return
    fake_a = self.b2a(self.samples_b)
    rec_a, rec_b = self.b2a(fake_b), self.a2b(fake_a)
    with self.writer.as_default(step=step):
      tf.summary.image("a_to_b", (as_rows(self.samples_a, fake_b, rec_a)[None] + 1) / 2, step=step)
      tf.summary.image("b_to_a", (as_rows(self.samples_b, fake_a, rec_b)[None] + 1) / 2, step=step)

  def flush(self):
    self.writer.flush()


def _init_generators(config, state):
  """Starts from published PyTorch generators (--init_a2b/--init_b2a), for fine-tuning."""
  for name, path in (("generator_a2b", config.init_a2b), ("generator_b2a", config.init_b2a)):
    if not path:
      continue
    source = convert_torch.load_generator(path)
    if any(isinstance(layer, cut_models.BlurDownsample) for layer in source.layers):
      raise config_lib.ConfigError(f"{path} is a CUT generator (anti-aliased); --init_a2b "
                                   "and --init_b2a take CycleGAN's generators")
    target = state.models[name]
    if [w.shape for w in source.weights] != [w.shape for w in target.weights]:
      blocks = sum(layer.name.endswith("_conv1") for layer in source.layers)
      raise config_lib.ConfigError(
          f"{path} is a generator with ngf={source.get_layer('stem_conv').filters}, "
          f"n_blocks={blocks}; this run builds ngf={config.ngf}, n_blocks={config.n_blocks}: "
          "set --ngf and --n_blocks to match")
    target.set_weights(source.get_weights())
    logging.info("%s starts from %s", name, path)


def _checkpoint_dir(workdir, chief):
  """Non-chief workers must save too (collectives), but into a throwaway folder."""
  return workdir_lib.checkpoint_dir(workdir) if chief else tempfile.mkdtemp(prefix="cyclegan-")


def train(config, strategy=None):
  """Trains (or resumes) in config.workdir to config.max_steps or the schedule's end.

  Returns the workdir on the chief (what to export from), None on other workers.
  """
  workdir = config.resolved_workdir
  strategy = strategy or runtime.make_strategy(config.strategy, config.tpu)
  requested, config = config, runtime.resolve(config, strategy.num_replicas_in_sync)
  if config.batch_size % strategy.num_replicas_in_sync:
    raise config_lib.ConfigError(
        f"batch_size {config.batch_size} is not a multiple of the {strategy.num_replicas_in_sync} "
        f"replicas; use --batch_size {strategy.num_replicas_in_sync}")
  if (xla.compiles_step(config) and strategy.num_replicas_in_sync > 1
      and config.strategy != "tpu"
      and not any("GPU" in device for device in strategy.extended.worker_devices)):
    raise config_lib.ConfigError(
        "--jit_scope step with several replicas needs GPUs or TPUs: XLA compiles no collectives "
        "for CPUs; use --jit_scope networks or one replica (--strategy default)")
  if config.jit_compile:
    logging.info("XLA compiles %s (--jit_scope %s)", "each network" if xla.compiles_networks(
        config) else "the whole step", config.jit_scope)
  elif config.jit_scope != "networks":
    logging.warning("--jit_scope %s does nothing without --jit_compile", config.jit_scope)
  chief = runtime.is_chief(strategy)
  domains = input_pipeline.load_domains(config, input_pipeline.SPLITS)
  if not input_pipeline.fixed_size(config) and config.batch_size > 1:
    raise config_lib.ConfigError(f"--preprocess {config.preprocess} gives images of different "
                                 "sizes: use --batch_size 1 or --preprocess resize_and_crop")
  per_epoch = input_pipeline.steps_per_epoch(domains, config.batch_size)
  last_step = total_steps(config, per_epoch)

  with strategy.scope():
    state = create_state(config, per_epoch)
  train_steps, trace = make_train_calls(config, state, strategy)
  if config.jit_compile:
    # Traced before the restore, which takes names (TensorFlow's uids) that the step's
    # functions would otherwise get: XLA's cache keys hold those names, and a resumed run
    # would compile anew what the first run compiled. On an iterator of the same structure.
    start_s = time.perf_counter()
    trace(iter(strategy.distribute_datasets_from_function(
        lambda ctx: input_pipeline.train_dataset(config, domains, 0, ctx))))
    logging.info("traced the step: %.1f s", time.perf_counter() - start_s)
  checkpoint = state.checkpoint()
  os.makedirs(workdir, exist_ok=True)
  checkpoint_dir = _checkpoint_dir(workdir, chief)
  try:
    latest = workdir_lib.restore_newest(
        workdir, lambda path: checkpoint.restore(path).assert_consumed(), move_aside=chief)
  except ValueError as e:
    raise TrainingError(str(e)) from None
  if latest:
    logging.info("resumed from %s", latest)
  else:
    _init_generators(config, state)
  manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, config.keep_checkpoints)
  if chief:
    config_lib.save(requested, workdir_lib.config_path(workdir))  # `auto` stays auto.

  start = int(state.step.numpy())
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: input_pipeline.train_dataset(config, domains, start, ctx))
  summaries = _Summaries(config, state, domains,
                         workdir_lib.tensorboard_dir(workdir) if chief else None)
  monitor = monitor_lib.Monitor(config, state, domains, workdir, chief, start, last_step,
                               summaries, agree=functools.partial(_on_any_worker, strategy))
  logging.info("training %s: steps %d..%d, %d steps/epoch, %d replicas, %s",
               config.name, start, last_step, per_epoch, strategy.num_replicas_in_sync,
               config.precision)
  try:
    _loop(config, state, train_steps, iter(dataset), manager, summaries, monitor, start,
          last_step, per_epoch)
  finally:
    summaries.flush()
    if not chief:
      shutil.rmtree(checkpoint_dir, ignore_errors=True)
  return workdir if chief else None


# What `--steps_per_call 0` aims one call at: long enough that the host's share is nil, short
# enough that Ctrl-C (handled between calls) answers at once.
CALL_SECONDS = 1.0


def steps_for_call(config, step, last_step, step_s, eval_every=0):
  """Steps the next call runs: up to the next step that logs, writes images, evaluates or
  saves, and --steps_per_call (0: about CALL_SECONDS of steps at the measured step time)."""
  wanted = config.steps_per_call or (max(1, int(CALL_SECONDS / step_s)) if step_s else 1)
  events = [e for e in (config.log_every, config.image_every, eval_every,
                        config.checkpoint_every) if e > 0]
  return max(1, min([wanted, last_step - step] + [e - step % e for e in events]))


def _loop(config, state, train_steps, iterator, manager, summaries, monitor, start, last_step,
          per_epoch):
  schedule = learning_rate_schedule(config, per_epoch)
  timer_start, timer_steps, first_step_s, step_s = time.perf_counter(), 0, None, None
  step = start
  try:
    while step < last_step:
      steps = (steps_for_call(config, step, last_step, step_s, monitor.every)
               if first_step_s else 1)
      # The first call compiles what --jit_compile compiles, or loads it from XLA's cache.
      with (quiet.xla_cache_notices_hidden() if config.jit_compile and first_step_s is None
            else contextlib.nullcontext()):
        values, done = train_steps(iterator, tf.constant(steps))
        values = {k: float(v) for k, v in values.items()}
      step += int(done)
      bad = [k for k, v in values.items() if not np.isfinite(v)]
      if bad:
        raise TrainingError(
            f"step {step}: loss {bad[0]} is {values[bad[0]]}; the last good checkpoint "
            f"(step {_checkpoint_step(manager)}) is kept; try a lower --lr or --precision fp32")
      if first_step_s is None:
        first_step_s = time.perf_counter() - timer_start
        logging.info("first step (%s): %.1f s", "XLA's compiling or loading" if config.jit_compile
                     else "tracing and graph optimisation", first_step_s)
        timer_start = time.perf_counter()
      else:
        timer_steps += int(done)
        step_s = (time.perf_counter() - timer_start) / timer_steps
      raised = {}
      if step % config.log_every == 0 or step == last_step:
        lr = float(schedule(step - 1))  # The rate this step used.
        summaries.scalars(step, values, prefix="loss/")
        summaries.scalars(step, {"learning_rate": lr})
        _log_progress(config, step, last_step, per_epoch, values, lr, step_s or first_step_s)
        raised.update(monitor.losses(step, values))
      if step % config.image_every == 0 or step == last_step:
        summaries.images(step)
      if step % config.checkpoint_every == 0:
        _save(manager, step)
      if monitor.due(step, last_step):
        raised.update(monitor.evaluate(step, lambda: _saved_at(manager, step)))
      if config.stop_on_alarm and step < last_step and monitor.agree(bool(raised)):
        _saved_at(manager, step)
        raise TrainingError(
            f"step {step}: stopped on the alarm above (--stop_on_alarm); checkpoints are kept "
            f"in {manager.directory}: run again with --nostop_on_alarm to go on, or export one "
            "with python -m cyclegan.export")
  except KeyboardInterrupt:
    step = int(state.step.numpy())
    logging.warning("interrupted at step %d: saving a checkpoint", step)
    _save(manager, step)
    raise
  if _checkpoint_step(manager) != step:
    _save(manager, step)
  # Equal on every worker of a multi-worker run when the replicas are in sync.
  logging.info("step %d: weights digest %s", step, weights_digest(state))


def weights_digest(state):
  digest = hashlib.sha256()
  for name in sorted(state.models):
    for weight in state.models[name].weights:
      digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
  return digest.hexdigest()[:16]


@contextlib.contextmanager
def _ctrl_c_deferred():
  """Holds Ctrl-C (SIGINT) until the block is done, then raises it: a save interrupted
  halfway (a second Ctrl-C while an interrupted run saves) would leave no checkpoint."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    raise KeyboardInterrupt


def _save(manager, step):
  """manager.save, whole even if Ctrl-C comes meanwhile; on a failed write (a full disk) one
  line saying which checkpoint is intact, with the failed save's temporary folder removed."""
  try:
    with _ctrl_c_deferred():
      manager.save(checkpoint_number=step)
  except (tf.errors.OpError, OSError) as e:
    for temporary in glob.glob(os.path.join(glob.escape(manager.directory), f"ckpt-{step}_temp*")):
      shutil.rmtree(temporary, ignore_errors=True)
    # TF's "{{function_node ...}} <file>; No space left on device [Op:SaveV2]": its last part.
    message = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", getattr(e, "message", None) or str(e))
    reason = getattr(e, "strerror", None) or message.strip().rsplit("; ", 1)[-1][:160]
    newest = (f"{manager.latest_checkpoint} (step {_checkpoint_step(manager)})"
              if manager.latest_checkpoint else "none yet")
    raise TrainingError(f"step {step}: saving a checkpoint failed ({reason}); the newest intact "
                        f"checkpoint is {newest}; free space in {manager.directory} and run "
                        "again to resume from it") from None


def _saved_at(manager, step):
  """The path of a checkpoint at `step`, saved now if the last one is older."""
  if _checkpoint_step(manager) != step:
    _save(manager, step)
  return manager.latest_checkpoint


def _checkpoint_step(manager):
  return workdir_lib.checkpoint_step(manager.latest_checkpoint) if manager.latest_checkpoint else 0


def _on_any_worker(strategy, flag):
  """Whether `flag` is true on any worker of a multi-worker run (an all-reduce, which every
  worker must call at the same step); elsewhere the flag itself."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return flag
  per_replica = strategy.run(lambda: tf.constant(float(flag)))
  return bool(strategy.reduce("SUM", per_replica, axis=None) > 0)


def _log_progress(config, step, last_step, per_epoch, values, lr, step_s):
  main = " ".join(f"{k}={values[k]:.3f}" for k in
                  ("g_total", "d_total", "cycle_a", "cycle_b", "nce", "nce_y") if k in values)
  logging.info("step %d/%d epoch %d | %s | lr %.2e | %.2f img/s | ETA %s",
               step, last_step, (step - 1) // per_epoch + 1, main, lr,
               config.batch_size / step_s, _format_duration(step_s * (last_step - step)))
