"""What the machine decides: the tf.distribute strategy, the precision `auto` picks (training
and the commands that run an export), and the graph optimizer, thread pools, oneDNN's
primitive cache. Only `configure_threads` and `configure_process` change process-wide state;
commands call them."""

import gc
import os

import tensorflow as tf
from absl import flags, logging

from cyclegan import export
from cyclegan import kernels


def make_strategy(name, tpu=""):
  """`auto` mirrors over all GPUs when there is more than one, else runs on the default device."""
  if name == "auto":
    name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    # With no GPU, mirror over the logical CPUs (tests split the CPU into several).
    devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy):
  """Only the chief writes checkpoints and exports that others would collide with."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and
                                          "chief" not in resolver.cluster_spec().as_dict())


# Generator work per replica step, ngf^2 * crop^2 * batch. Below it, per-op overhead dominates a
# CPU step: bf16's casts cost more than its faster convolutions save. Above it, bf16 is 1.3-1.8x
# faster. Measured on a 2-core AVX512_BF16 EPYC with tools/benchmark.py --what train
# (docs/performance.md).
CPU_BIG_MODEL_WORK = 2**24

# Generator work per replica step up to which a GPU with TF32 (compute capability 8.0+) trains
# faster in fp32 (its convolutions then run as TF32 on the tensor cores): such a step is bound
# by per-op overhead, not arithmetic, and bf16's casts add ops. One H100, the full model at
# 256 px, batch 1 (work 2^28): fp32 0.075 s vs bf16 0.088-0.090 s per step (docs/performance.md).
# Above it bf16 stays the pick: not measured in fp32.
GPU_FP32_WORK = 2**28


def cpu_has_bf16():
  """AVX512_BF16 or AMX: oneDNN then runs bf16 convolutions natively."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "").split()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


# The compute capability from which NVIDIA GPUs run bf16 natively (Ampere).
GPU_BF16_CAPABILITY = (8, 0)


def gpu_capability():
  """The lowest compute capability among this machine's GPUs, or None without GPUs."""
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    return None
  return min(tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0))
             for g in gpus)


def auto_precision(config, num_replicas=1):
  """(precision, why) for `--precision auto` on this machine."""
  if config.strategy == "tpu":
    return "bf16", "TPU"
  capability = gpu_capability()
  if capability is not None:
    if capability >= GPU_BF16_CAPABILITY:
      if _work(config, num_replicas) <= GPU_FP32_WORK:
        return "fp32", (f"GPU compute capability {capability[0]}.{capability[1]}: TF32, and a "
                        "step this small is bound by per-op overhead, which bf16's casts add to")
      return "bf16", f"GPU compute capability {capability[0]}.{capability[1]} has bf16"
    if capability >= (7, 0):
      return "fp16", f"GPU compute capability {capability[0]}.{capability[1]}: fp16 tensor cores"
    return "fp32", f"GPU compute capability {capability[0]}.{capability[1]}"
  if not cpu_has_bf16():
    return "fp32", "CPU without AVX512_BF16/AMX"
  if not _big_for_cpu(config, num_replicas):
    return "fp32", "model too small for bf16 to pay on CPU"
  return "bf16", "CPU with AVX512_BF16"


def _work(config, num_replicas):
  """Generator work per replica step: ngf^2 * crop^2 * per-replica batch."""
  return config.ngf**2 * config.crop_size**2 * max(1, config.batch_size // num_replicas)


def _big_for_cpu(config, num_replicas):
  return _work(config, num_replicas) >= CPU_BIG_MODEL_WORK


def resolve(config, num_replicas=1):
  """The config with `--precision auto` resolved for this machine (logged with the reason)."""
  if config.precision != "auto":
    return config
  precision, why = auto_precision(config, num_replicas)
  logging.info("precision auto: %s (%s)", precision, why)
  return config.replace(precision=precision)


def define_inference_flags(computed="the model"):
  """--precision (of what `computed` names) and --cpu_kernels of the commands that run an
  export (translate, serve)."""
  flags.DEFINE_enum(
      "precision", "auto", ["auto", *export.UINT8_SIGNATURES],
      f"Compute precision of {computed}. auto: bf16 where the machine "
      "runs it natively (CPUs with AVX512_BF16/AMX, where it is ~1.6x faster, and GPUs of "
      "compute capability 8+; outputs within a few levels of fp32), fp32 elsewhere and for "
      "exports without a bf16 signature.")
  flags.DEFINE_enum(
      "cpu_kernels", "auto", list(kernels.MODES),
      "CPU convolution routes (cyclegan/kernels/): auto runs the export's graph as exported "
      "(with the routes that paid where it was exported); off traces its weights again with "
      "plain convolutions (oneDNN's), as tiles and videos then are too.")


def auto_inference_precision():
  """(precision, why) for `--precision auto` of a command that runs an export: bf16 where the
  machine runs it natively, else fp32."""
  capability = gpu_capability()
  if capability is not None:
    name = f"GPU compute capability {capability[0]}.{capability[1]}"
    return ("bf16", f"{name} has bf16") if capability >= GPU_BF16_CAPABILITY else ("fp32", name)
  if cpu_has_bf16():
    return "bf16", "CPU with AVX512_BF16/AMX"
  return "fp32", "CPU without AVX512_BF16/AMX"


def inference_precision(requested, signatures):
  """The precision to run an export with `signatures` (names) at: `requested`, or auto's
  pick, logged with the reason; fp32 (one warning) where an older export has no signature
  for the pick. An explicit precision is not checked here: its caller says what is missing."""
  if requested != "auto":
    return requested
  precision, why = auto_inference_precision()
  if export.UINT8_SIGNATURES[precision] not in signatures:
    logging.warning("precision auto: fp32, not %s (%s): the export has no %s signature; "
                    "export it again with this version", precision, why,
                    export.UINT8_SIGNATURES[precision])
    return "fp32"
  logging.info("precision auto: %s (%s)", precision, why)
  return precision


def graph_optimizer_off(config):
  """Whether `--graph_optimizer` (auto: off on CPU-only machines) turns Grappler off."""
  if config.graph_optimizer != "auto":
    return config.graph_optimizer == "off"
  return config.strategy != "tpu" and not tf.config.list_physical_devices("GPU")


def multi_step_calls(config):
  """Whether training runs several steps per tf.function call (--steps_per_call 0: on GPUs and
  TPUs, whose steps are milliseconds, so a host round trip per step would idle them).

  Not on CPU: a step there is 0.04-4 s against about a millisecond of round trip (the built-in
  default took the same time per step either way), and the loop's While op cost the full
  model at 256 px 0.3 GB more peak memory, a slower step (3.99 vs 3.54 s) and a second more
  before the first step (2-core EPYC, bf16).
  """
  if config.steps_per_call:
    return config.steps_per_call > 1
  return config.strategy == "tpu" or bool(tf.config.list_physical_devices("GPU"))


def configure_threads():
  """Training on a CPU: two inter-op threads, the cores split between them.

  A train step is two independent chains (A->B->A and B->A->B) of mostly small ops. TF's
  defaults (both pools as wide as the CPU) run two ops at once with every core each: on a
  2-core EPYC the built-in default's step took 0.082 s, with one thread per op 0.044-0.056 s;
  the full model was no slower (256 px: 4.02 vs 4.14 s). TF_NUM_INTRAOP_THREADS /
  TF_NUM_INTEROP_THREADS win when set. Call before TensorFlow runs anything.
  """
  if (tf.config.list_physical_devices("GPU") or "TF_NUM_INTRAOP_THREADS" in os.environ or
      "TF_NUM_INTEROP_THREADS" in os.environ):
    return
  cores = len(os.sched_getaffinity(0))
  try:
    tf.config.threading.set_inter_op_parallelism_threads(min(2, cores))
    tf.config.threading.set_intra_op_parallelism_threads(max(1, cores // 2))
    logging.info("threads: %d inter-op, %d intra-op", min(2, cores), max(1, cores // 2))
  except RuntimeError:  # TensorFlow already started (a test, or a notebook): keep its pools.
    logging.info("thread pools already started; keeping them")


def configure_process(config):
  """Process-wide: Grappler on or off, oneDNN's primitive cache, and Python's garbage
  collector past what is loaded. Call before TensorFlow runs a convolution.

  Grappler adds 3-8 s to the first step on CPU and nothing to the step time (with
  configure_threads' pools; under TF's default pools its fusions had paid for the built-in
  default). TensorFlow rebuilds every filter-gradient convolution's oneDNN primitive at every
  step unless TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE is false (read once, at the first convolution):
  cached, the built-in default's step took 0.044-0.046 s instead of 0.051-0.057 s, the full
  model the same time and memory. The collector's full passes walk every object TensorFlow
  and Keras loaded: frozen, tracing the step spends 0.02 s in them instead of 0.2-0.3 s.
  """
  tf.config.optimizer.set_experimental_options(
      {"disable_meta_optimizer": graph_optimizer_off(config)})
  os.environ.setdefault("TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE", "false")
  gc.freeze()
