"""What XLA compiles of the train step (`--jit_compile`, `--jit_scope`).

`networks` (the default): each network's call is an XLA program of its own, and so is, under
a tape, its forward pass that keeps what the backward needs and that backward pass. The step
calls each generator three times and each discriminator three times, and each call runs the
same programs, so each is compiled once; the losses, the pool and the optimizers' updates run
as a graph around them. On CPU at 256 px that compiles in about 7 s.

`step`: the replica's whole step is one program: the most fusion, the shape TPUs run (a
TPUStrategy compiles the whole step whatever the scope), and the only scope whose collectives
XLA itself compiles. XLA compiles every network call inlined into it anew: about 30 s on CPU
at 256 px, over 100 s on an H100.
"""

import tensorflow as tf

from cyclegan import kernels


class CompiledNetwork:
  """A network whose calls run as XLA programs, compiled once per input shape and `training`.

  It is called as the network is and has its `trainable_variables`, which is all the train
  steps use of a network.
  """

  def __init__(self, network):
    self.network = network
    self._call = tf.function(
        plain_convolutions(lambda *inputs, training: network(*inputs, training=training)),
        jit_compile=True, autograph=False)

  @property
  def trainable_variables(self):
    return self.network.trainable_variables

  def __call__(self, *inputs, training=None):
    return self._call(*inputs, training=training)


def plain_convolutions(fn):
  """fn, traced with plain convolutions: the CPU routes (cyclegan/kernels) work around
  oneDNN's kernels, which XLA does not run. Measured on CPU, 256 px fp32, networks compiled:
  the same step time, peak memory 6.25 -> 3.64 GB."""

  def plain(*args, **kwargs):
    with kernels.off():
      return fn(*args, **kwargs)

  return plain


def compiles_networks(config):
  return config.jit_compile and config.jit_scope == "networks"


def compiles_step(config):
  return config.jit_compile and config.jit_scope == "step"


def networks_for_step(config, networks):
  """`networks` (a dict or a tuple of networks) as the step calls them: each compiled on its
  own where `--jit_scope networks` says so, else as they are."""
  if not compiles_networks(config):
    return networks
  if isinstance(networks, dict):
    return {name: CompiledNetwork(network) for name, network in networks.items()}
  return type(networks)(*map(CompiledNetwork, networks))


def replica_step(config, step):
  """The replica's `step` as the strategy runs it: one XLA program where `--jit_scope step`
  says so (no AutoGraph: the step has no Python control flow on tensors, and converting every
  function it calls cost about a second of the first step). Wherever XLA compiles it whole,
  TPUs included, it is traced with plain convolutions."""
  if config.strategy == "tpu" or compiles_step(config):
    step = plain_convolutions(step)
  if compiles_step(config):
    step = tf.function(step, jit_compile=True, reduce_retracing=True, autograph=False)
  return step
