"""The train step's randomness, drawn alike whether XLA compiles the step (--jit_compile
--jit_scope step) or TensorFlow runs it: the same pool choices, patches and flips either way.

Measured on TF 2.21: XLA's stateless random kernels draw what TensorFlow's do only for seeds
whose words lie in [0, 2^31), and only integers (their floats differ). So every seed is folded
in with `fold_in`, and every draw is an integer.
"""

import tensorflow as tf


def fold_in(seed, data):
  """tf.random.experimental.stateless_fold_in, kept in [0, 2^31)."""
  return tf.bitwise.bitwise_and(
      tf.cast(tf.random.experimental.stateless_fold_in(seed, data), tf.int64), 0x7FFFFFFF)


def integer(seed, maxval, shape=()):
  """Uniform integers in [0, maxval) (int32)."""
  return tf.random.stateless_uniform(shape, seed, maxval=maxval, dtype=tf.int32)


def permutation(seed, n):
  """A random order of range(n): the order of full-range int64 draws (ties, at n^2 / 2^65,
  keep index order). XLA compiles a sort, not StatelessShuffle."""
  draws = tf.random.stateless_uniform([n], seed, minval=None, maxval=None, dtype=tf.int64)
  return tf.argsort(draws, stable=True)
