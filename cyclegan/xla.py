"""What XLA compiles of the train step (`--jit_compile`, `--jit_scope`).

`networks` (the default): each network's call is an XLA program of its own, and so is, under
a tape, its forward pass that keeps what the backward needs and that backward pass. The step
calls each generator three times and each discriminator three times, and each call runs the
same programs, so each is compiled once; the losses, the pool, the optimizers' updates and the
collectives run as a graph around them. On CPU at 256 px fp32 the first step costs 7.9 s more
than a steady one, against 4.4 s traced (docs/performance.md).

`step`: the replica's whole step is one program: the most fusion, and the only scope whose
collectives XLA itself compiles. XLA compiles every network call inlined into it anew: 17 s
more on CPU at 256 px; on an H100 its first compile outlasted 100 s. TPUs compile the whole
step whatever the scope (a TPUStrategy compiles what it runs), so there no network is wrapped.
"""

import contextlib

import tensorflow as tf

from cyclegan import kernels


class CompiledNetwork:
  """A network whose calls run as XLA programs, compiled once per input shape and `training`.

  It is called as the network is and has its `trainable_variables`, which is all the train
  steps use of a network.
  """

  def __init__(self, network):
    self.network = network
    self._call = tf.function(lambda *inputs, training: network(*inputs, training=training),
                             jit_compile=True, autograph=False)

  @property
  def trainable_variables(self):
    return self.network.trainable_variables

  def __call__(self, *inputs, training=None):
    return self._call(*inputs, training=training)


def compiles_networks(config):
  """Whether each network is compiled on its own (never on TPUs, which compile the step)."""
  return config.jit_compile and config.jit_scope == "networks" and config.strategy != "tpu"


def compiles_step(config):
  return config.jit_compile and config.jit_scope == "step"


def tracing(config):
  """The block to trace the step in: with plain convolutions wherever XLA compiles (TPUs
  included), as the CPU routes (cyclegan/kernels) work around oneDNN's kernels, which XLA does
  not run. Measured on CPU, 256 px fp32, networks compiled: the same step time, peak memory
  6.25 -> 3.64 GB. The switch is process-wide: enter this in the thread that traces the step,
  around strategy.run, not in a replica's thread."""
  if config.jit_compile or config.strategy == "tpu":
    return kernels.off()
  return contextlib.nullcontext()


def networks_for_step(config, networks):
  """`networks` (a dict or a NamedTuple of networks) as the step calls them: each compiled on
  its own where `--jit_scope networks` says so, else as they are."""
  if not compiles_networks(config):
    return networks
  if isinstance(networks, dict):
    return {name: CompiledNetwork(network) for name, network in networks.items()}
  return networks._make(map(CompiledNetwork, networks))


def replica_step(config, step):
  """The replica's `step` as the strategy runs it: one XLA program where `--jit_scope step`
  says so (no AutoGraph: the step has no Python control flow on tensors, and converting every
  function it calls cost about a second of the first step)."""
  if compiles_step(config):
    return tf.function(step, jit_compile=True, reduce_retracing=True, autograph=False)
  return step
