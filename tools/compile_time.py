"""How long XLA takes to compile the train step, by network and by `--jit_scope`.

  CYCLEGAN_HOME=$(mktemp -d) python tools/compile_time.py --size 256 --precision fp32

Prints one JSON line. For each network's forward and backward compiled alone, and for the
CycleGAN step (pool included) traced, compiled by networks and compiled whole: the first
call's seconds, a second call's, and their difference (what tracing and compiling cost).
Each step's first call traces it too: the traced step's difference is that tracing alone.
Compiled programs go to $CYCLEGAN_HOME/xla_cache (cyclegan's import sets TF_XLA_FLAGS): an
empty one measures compiling; run the command again to measure loading them instead.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from cyclegan import config as config_lib  # noqa: E402
from cyclegan import kernels  # noqa: E402
from cyclegan import runtime  # noqa: E402
from cyclegan import train_lib  # noqa: E402

flags.DEFINE_integer("size", 256, "Square image side.")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "Compute precision.")
flags.DEFINE_integer("ngf", 64, "Generator width.")
flags.DEFINE_integer("n_blocks", 9, "Generator residual blocks.")
FLAGS = flags.FLAGS


def _first_and_second(fn, *args):
  times = []
  for _ in range(2):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    times.append(time.perf_counter() - start)
  return {"first_s": round(times[0], 2), "second_s": round(times[1], 2),
          "compile_s": round(times[0] - times[1], 2)}


def _network(model, image):
  @tf.function(jit_compile=True, autograph=False)
  def forward_backward(x):
    with kernels.off(), tf.GradientTape() as tape:  # as the step's XLA traces it
      loss = tf.reduce_mean(tf.cast(model(x, training=True), tf.float32))
    return tape.gradient(loss, model.trainable_variables)
  return _first_and_second(forward_backward, image)


def main(argv):
  del argv
  runtime.configure_threads()
  config = runtime.resolve(config_lib.resolve(None, {
      "crop_size": FLAGS.size, "load_size": FLAGS.size, "ngf": FLAGS.ngf,
      "n_blocks": FLAGS.n_blocks, "precision": FLAGS.precision, "jit_compile": True,
      "strategy": "default"}), 1)
  runtime.configure_process(config)
  state = train_lib.create_state(config, 100)
  image = tf.constant(np.random.default_rng(0).uniform(-1, 1, (1, FLAGS.size, FLAGS.size, 3)),
                      tf.float32)
  result = {"size": FLAGS.size, "precision": config.precision,
            "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu"}
  for name in ("generator_a2b", "discriminator_a"):
    result[name] = _network(state.models[name], image)
  strategy = tf.distribute.get_strategy()
  batch = next(iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors({"a": image, "b": image}))))
  for name, jit in (("traced_step", {"jit_compile": False}),
                    ("step_by_networks", {"jit_scope": "networks"}),
                    ("whole_step", {"jit_scope": "step"})):
    step = train_lib.make_train_step(config.replace(**jit), state, strategy)
    result[name] = _first_and_second(step, batch)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
