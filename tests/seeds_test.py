"""The step's draws, compiled by XLA and not: the same numbers."""

import numpy as np
import tensorflow as tf

from cyclegan import seeds


def _both(draw):
  return draw().numpy(), tf.function(draw, jit_compile=True)().numpy()


def test_fold_in_keeps_seeds_where_xla_draws_what_tensorflow_does():
  """From any seed in [0, 2^31) (a step's first, (seed, step), is), folded seeds stay there
  and XLA draws the same integers; tf.random.experimental.stateless_fold_in gives negative
  words, and there the two kernels differ."""
  starts = tf.random.stateless_uniform([16, 2], [1, 2], minval=0, maxval=2**31, dtype=tf.int64)
  folded = tf.stack([seeds.fold_in(seeds.fold_in(starts[i], 0), 7) for i in range(16)])
  assert (folded.numpy() >= 0).all() and (folded.numpy() < 2**31).all()
  traced, compiled = _both(lambda: tf.stack([seeds.integer(
      seeds.fold_in(seeds.fold_in(starts[i], 0), 1), 50) for i in range(16)]))
  np.testing.assert_array_equal(traced, compiled)
  assert len(set(traced.tolist())) > 8
  unmasked = _both(lambda: tf.stack([seeds.integer(tf.random.experimental.stateless_fold_in(
      tf.random.experimental.stateless_fold_in(starts[i], 0), 1), 50) for i in range(16)]))
  assert not np.array_equal(*unmasked)  # what the mask is for


def test_a_permutation_is_one_and_the_same_compiled():
  seed = seeds.fold_in(tf.constant([0, 5], tf.int64), 3)
  traced, compiled = _both(lambda: seeds.permutation(seed, 1000))
  np.testing.assert_array_equal(traced, compiled)
  assert sorted(traced.tolist()) == list(range(1000)) and traced.tolist() != list(range(1000))
