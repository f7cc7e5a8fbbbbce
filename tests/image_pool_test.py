"""The image pool: fill first, then a coin flip per image; stateless, per replica."""

import numpy as np
import tensorflow as tf

from cyclegan import image_pool


def _batch(value, n=1):
  return tf.fill([n, 2, 2, 3], float(value))


def test_size_zero_passes_images_through():
  pool = image_pool.ImagePool(0, [2, 2, 3])
  out = pool.query(_batch(7.0), tf.constant([0, 0]))
  np.testing.assert_array_equal(out, _batch(7.0))


def test_fills_then_mixes_stored_and_new_images():
  pool = image_pool.ImagePool(3, [2, 2, 3])
  query = tf.function(pool.query)
  for i in range(3):  # While filling, every image comes straight back.
    np.testing.assert_array_equal(query(_batch(i), tf.constant([0, i])), _batch(i))
  assert int(pool.count.numpy()) == 3
  returned = [float(query(_batch(100 + i), tf.constant([0, 10 + i]))[0, 0, 0, 0])
              for i in range(40)]
  new = sum(v == 100 + i for i, v in enumerate(returned))
  assert 8 < new < 32, "about half the queries should return the new image"
  # Whatever came back that was not new was stored earlier.
  seen = set(range(3)) | {100 + i for i in range(40)}
  assert set(returned) <= seen
  assert set(pool.images.numpy()[:, 0, 0, 0]) <= seen


def test_same_seed_same_choices():
  def run():
    pool = image_pool.ImagePool(2, [2, 2, 3])
    return [float(pool.query(_batch(i, n=2), tf.constant([5, i]))[1, 0, 0, 0]) for i in range(6)]
  assert run() == run()


def test_each_replica_keeps_its_own_pool():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    pool = image_pool.ImagePool(4, [2, 2, 3])

  @tf.function
  def step(value):
    def replica_fn():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      return pool.query(_batch(value) + tf.cast(replica, tf.float32), tf.constant([0, 0]))
    return strategy.run(replica_fn)

  step(1.0)
  step(2.0)
  local = [v.numpy() for v in strategy.experimental_local_results(pool.images)]
  np.testing.assert_array_equal(local[0][:2, 0, 0, 0], [1.0, 2.0])
  np.testing.assert_array_equal(local[1][:2, 0, 0, 0], [2.0, 3.0])
