"""Speed and memory of one configuration; prints one JSON line per measurement.

  python tools/benchmark.py --what train --size 256 --precision bf16
  python tools/benchmark.py --what translate --size 512
  python tools/benchmark.py --what input --size 256 --dataset ../shared/data/horse2zebra
  python tools/benchmark.py --what folder --size 512 --precision fp32

Run one configuration per process: peak RSS is the process's own. Models are full size
(ngf 64, 9 blocks, 70x70 PatchGAN) unless --ngf/--n_blocks say otherwise.
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan import config as config_lib  # noqa: E402
from cyclegan import export  # noqa: E402
from cyclegan import runtime  # noqa: E402
from cyclegan import input_pipeline  # noqa: E402
from cyclegan import models  # noqa: E402
from cyclegan import synthetic  # noqa: E402
from cyclegan import tiling  # noqa: E402
from cyclegan import train_lib  # noqa: E402
from cyclegan import translate  # noqa: E402

flags.DEFINE_enum("what", "train", ["train", "translate", "input", "folder"],
                  "train: one full iteration; translate: generator forward; input: tf.data "
                  "only; folder: cyclegan.translate's folder path, JPEGs in and out, through "
                  "an export (median_s: steady seconds per image).")
flags.DEFINE_enum("model", "cycle_gan", ["cycle_gan", "cut", "fastcut"],
                  "For --what train: which method's step (cyclegan.train --model).")
flags.DEFINE_integer("size", 256, "Square image side.")
flags.DEFINE_integer("batch_size", 1, "Global batch size.")
flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16", "fp16"],
                  "Compute precision (auto: as cyclegan.train picks it for this machine).")
flags.DEFINE_enum("graph_optimizer", "auto", ["auto", "on", "off"],
                  "Grappler (auto: as cyclegan.train picks it for this machine; for translate, "
                  "on, as cyclegan.translate runs the SavedModels under TensorFlow's defaults).")
flags.DEFINE_string("strategy", "default", "tf.distribute strategy (see cyclegan.train --help).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the step as --jit_scope says.")
flags.DEFINE_enum("jit_scope", "networks", ["networks", "step"],
                  "What --jit_compile compiles (cyclegan.train --jit_scope).")
flags.DEFINE_integer("steps", 5, "Timed steps after the warm-up step.")
flags.DEFINE_integer("ngf", 64, "Generator width.")
flags.DEFINE_integer("n_blocks", 9, "Generator residual blocks.")
flags.DEFINE_integer("ndf", 64, "Discriminator width.")
flags.DEFINE_integer("pool_size", 50, "Image pool size.")
flags.DEFINE_integer("steps_per_call", 0, "As cyclegan.train's (>1: the multi-step loop; 0: "
                     "as cyclegan.train picks it here). Where the loop runs, each timed call runs "
                     "this many steps (0: 20) and the step time is the call's share.")
flags.DEFINE_string("dataset", "synthetic", "For --what input: any --dataset of cyclegan.train.")
flags.DEFINE_integer("images", 16, "For --what folder: JPEGs in the folder (more than "
                     "FOLDER_WARMUP).")
FLAGS = flags.FLAGS


BREAKDOWN = {}  # where a train run's first step goes, before the first call's own time
FOLDER_BATCH_SIZE = 4  # cyclegan.translate's --batch_size default
FOLDER_WARMUP = 4  # images left out of a folder's steady time (first calls, the first batch)


def _timed(fn, steps, first_fn=None):
  """(first call seconds, per-call seconds of the next `steps` calls)."""
  start = time.perf_counter()
  (first_fn or fn)()
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, times


def _config():
  """The model's recipe (cyclegan.train --model) with this run's flags over it."""
  return config_lib.make_config({**config_lib.MODEL_DEFAULTS.get(FLAGS.model, {}), **dict(
      model=FLAGS.model, crop_size=FLAGS.size, load_size=max(286, FLAGS.size),
      batch_size=FLAGS.batch_size, precision=FLAGS.precision, strategy=FLAGS.strategy,
      jit_compile=FLAGS.jit_compile, jit_scope=FLAGS.jit_scope, ngf=FLAGS.ngf,
      n_blocks=FLAGS.n_blocks, ndf=FLAGS.ndf,
      dataset=FLAGS.dataset, graph_optimizer=FLAGS.graph_optimizer,
      pool_size=FLAGS.pool_size if FLAGS.model == "cycle_gan" else 0,
      steps_per_call=FLAGS.steps_per_call, synthetic_size=max(72, FLAGS.size))})


def bench_train(config):
  strategy = runtime.make_strategy(config.strategy)
  shape = [config.batch_size, config.crop_size, config.crop_size, 3]
  batch = {"a": tf.random.uniform(shape, -1, 1), "b": tf.random.uniform(shape, -1, 1)}
  # drop_remainder, as the input pipeline: the step is traced for batches of a known size.
  dataset = tf.data.Dataset.from_tensors(batch).unbatch().batch(
      config.batch_size // strategy.num_replicas_in_sync, drop_remainder=True).repeat()
  start = time.perf_counter()
  with strategy.scope():
    state = train_lib.create_state(config, 1000)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  per_call = 1
  if runtime.multi_step_calls(config):  # As cyclegan.train runs it: several steps per call.
    per_call = FLAGS.steps_per_call if FLAGS.steps_per_call > 1 else 20
    train_steps, one, many = (train_lib.make_train_loop(config, state, strategy), tf.constant(1),
                              tf.constant(per_call))
    trace = lambda: train_steps.get_concrete_function(iterator, one)
    first_run, run = (lambda: train_steps(iterator, one)[0]), lambda: train_steps(iterator, many)[0]
  else:
    train_step = train_lib.make_train_step(config, state, strategy)
    trace = lambda: train_step.get_concrete_function(next(iterator))
    first_run = run = lambda: train_step(next(iterator))
  BREAKDOWN["build_s"] = time.perf_counter() - start  # models, optimizers, input
  start = time.perf_counter()
  trace()
  BREAKDOWN["trace_s"] = time.perf_counter() - start  # Python tracing of the step
  BREAKDOWN["steps_per_call"] = per_call
  first, times = _timed(lambda: float(run()["g_total"]), FLAGS.steps,
                        lambda: float(first_run()["g_total"]))
  return first, [t / per_call for t in times]


def bench_translate(config):
  generator = models.resnet_generator(config.ngf, config.n_blocks,
                                      dtype=models.POLICIES[config.precision])
  images = tf.random.uniform([config.batch_size, config.crop_size, config.crop_size, 3], -1, 1)
  forward = tf.function(lambda x: generator(x, training=False), jit_compile=config.jit_compile)
  return _timed(lambda: forward(images).numpy(), FLAGS.steps)


class _Completions:
  """A progress bar's update(), recording when each image is done."""

  def __init__(self):
    self.times = []

  def update(self, n=1):
    self.times += [time.perf_counter()] * n


def bench_folder(config):
  """(seconds to the first image done, from loading the export; each image's share of the
  time after the first FOLDER_WARMUP, whose mean is the steady time per image)."""
  with tempfile.TemporaryDirectory() as tmp:
    model = os.path.join(tmp, "model")
    export.save(models.resnet_generator(config.ngf, config.n_blocks), model)
    inputs = os.path.join(tmp, "in")
    os.makedirs(inputs)
    for i, image in enumerate(synthetic.warm_scenes(FLAGS.images, config.crop_size, seed=0)):
      Image.fromarray(image).save(os.path.join(inputs, f"{i:03d}.jpg"), quality=95)
    jobs, _ = translate.plan(inputs, os.path.join(tmp, "out"), "auto", False)
    done = _Completions()
    start = time.perf_counter()
    translator = translate.TiledModel(translate.resolve_model(model), config.precision, None,
                                      tiling.HALO, 0)
    failures = translate.translate_all(jobs, translator, FOLDER_BATCH_SIZE, done)
    if failures or len(done.times) != FLAGS.images:
      raise RuntimeError(f"the folder run failed: {failures}")
  times = done.times[FOLDER_WARMUP - 1:]
  return done.times[0] - start, [b - a for a, b in zip(times, times[1:])]


def bench_input(config):
  domains = input_pipeline.load_domains(config)
  iterator = iter(input_pipeline.train_dataset(config, domains))
  batches = 50
  def run():
    for _ in range(batches):
      next(iterator)["a"].numpy()
  first, times = _timed(run, FLAGS.steps)
  return first / batches, [t / batches for t in times]


def main(argv):
  del argv
  if FLAGS.what == "train":
    runtime.configure_threads()  # as cyclegan.train sets them
  config = runtime.resolve(_config())
  if FLAGS.what not in ("translate", "folder"):
    runtime.configure_process(config)
  elif config.graph_optimizer != "auto":  # cyclegan.translate runs TensorFlow's defaults.
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": runtime.graph_optimizer_off(config)})
  if FLAGS.what == "folder" and FLAGS.images <= FOLDER_WARMUP:
    raise app.UsageError(f"--images must be more than {FOLDER_WARMUP}")
  bench = {"train": bench_train, "translate": bench_translate, "input": bench_input,
           "folder": bench_folder}[FLAGS.what]
  first, times = bench(config)
  # A folder's images finish a batch at a time: its steady time is the mean, (t_N - t_4)/(N - 4).
  median = (statistics.mean if FLAGS.what == "folder" else statistics.median)(times)
  batch_size = FOLDER_BATCH_SIZE if FLAGS.what == "folder" else FLAGS.batch_size
  print(json.dumps({
      "what": FLAGS.what, "model": FLAGS.model, "size": FLAGS.size, "batch_size": batch_size,
      "precision": config.precision, "requested_precision": FLAGS.precision,
      "graph_optimizer": FLAGS.graph_optimizer, "ndf": FLAGS.ndf, "strategy": FLAGS.strategy, "jit_compile": FLAGS.jit_compile,
      "jit_scope": FLAGS.jit_scope if FLAGS.jit_compile else None,
      "ngf": FLAGS.ngf, "n_blocks": FLAGS.n_blocks, "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
      "median_s": round(median, 4), "images_per_s": round((1 if FLAGS.what == "folder" else batch_size) / median, 3),
      "min_s": round(min(times), 4), "max_s": round(max(times), 4), "steps": len(times),
      "first_step_s": round(BREAKDOWN.get("trace_s", 0) + first, 2),  # as cyclegan.train logs it
      **{k: round(v, 2) for k, v in BREAKDOWN.items()},
      "first_call_s": round(first, 2), "first_call_over_steady_s": round(first - median, 2),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      **({"peak_gpu_gb": round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30, 2)}
         if tf.config.list_physical_devices("GPU") else {}),
  }), flush=True)


if __name__ == "__main__":
  app.run(main)
