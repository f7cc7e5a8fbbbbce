"""The image pool: fill first, then a coin flip per image; any size; stateless; per replica."""

import numpy as np
import pytest
import tensorflow as tf

from cyclegan import image_pool


def _batch(value, n=1, size=2):
  return tf.fill([n, size, size, 3], float(value))


def _contents(pool):
  return [pool.image(k).numpy() for k in range(int(pool.count.numpy()))]


def test_size_zero_passes_images_through():
  pool = image_pool.ImagePool(0)
  out = pool.query(_batch(7.0), tf.constant([0, 0]))
  np.testing.assert_array_equal(out, _batch(7.0))


def test_fills_then_swaps_a_stored_image_for_the_new_one():
  pool = image_pool.ImagePool(3)
  query = tf.function(pool.query)
  for i in range(3):  # While filling, every image comes straight back and is stored.
    np.testing.assert_array_equal(query(_batch(i), tf.constant([0, i])), _batch(i))
  assert [c[0, 0, 0] for c in _contents(pool)] == [0, 1, 2]
  swapped = 0
  for i in range(40):
    new = _batch(100 + i)
    before = _contents(pool)
    out = query(new, tf.constant([0, 10 + i]))[0].numpy()
    after = _contents(pool)
    if np.array_equal(out, new[0]):  # The new image came back: the pool is unchanged.
      assert all(np.array_equal(a, b) for a, b in zip(before, after))
      continue
    swapped += 1  # A stored image came back, and the new one took its slot.
    slot = [k for k, image in enumerate(before) if np.array_equal(image, out)]
    assert len(slot) == 1
    for k in range(3):
      np.testing.assert_array_equal(after[k], new[0] if k == slot[0] else before[k])
  assert 8 < swapped < 32, "about half the queries should swap"


def test_images_of_different_sizes():
  pool = image_pool.ImagePool(2)
  sizes = [(4, 6), (8, 4), (2, 2)]
  for i, (h, w) in enumerate(sizes[:2]):
    pool.query(tf.fill([1, h, w, 3], float(i)), tf.constant([1, i]))
  assert [pool.image(k).shape for k in range(2)] == [(4, 6, 3), (8, 4, 3)]
  returned = set()
  for i in range(12):  # Once full, images of any stored size come back whole.
    out = pool.query(tf.fill([1, 2, 2, 3], 9.0 + i), tf.constant([2, i]))
    returned.add(tuple(out.shape[1:3]))
    stored = [pool.image(k) for k in range(2)]
    assert all(float(tf.reduce_min(s)) == float(tf.reduce_max(s)) for s in stored)
  assert returned & {(4, 6), (8, 4)} and (2, 2) in returned


def test_same_seed_same_choices():
  def run():
    pool = image_pool.ImagePool(2)
    return [float(pool.query(_batch(i, n=2), tf.constant([5, i]))[1, 0, 0, 0]) for i in range(6)]
  assert run() == run()


def _mirrored_pool():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    pool = image_pool.ImagePool(4)

  @tf.function
  def step(value):
    def replica_fn():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      return pool.query(_batch(value, size=2 + replica) + tf.cast(replica, tf.float32),
                        tf.constant([0, 0]))
    return strategy.run(replica_fn)
  return strategy, pool, step


def _local_contents(strategy, pool):
  """Every replica's stored images."""
  out = []
  for pixels, shapes, count in zip(*(strategy.experimental_local_results(v) for v in
                                     (pool._pixels, pool._shapes, pool.count))):
    sizes = np.prod(shapes.numpy()[:int(count.numpy())], axis=1)
    flat = np.split(pixels.numpy(), np.cumsum(sizes)[:-1])
    out.append([f.reshape(s) for f, s in zip(flat, shapes.numpy())])
  return out


def test_each_replica_keeps_its_own_pool():
  strategy, pool, step = _mirrored_pool()
  step(1.0)
  step(2.0)
  local = _local_contents(strategy, pool)
  assert [image[0, 0, 0] for image in local[0]] == [1.0, 2.0]
  assert [image[0, 0, 0] for image in local[1]] == [2.0, 3.0]
  assert local[1][0].shape == (3, 3, 3)


def test_a_checkpoint_restores_every_replicas_pool(tmp_path):
  strategy, pool, step = _mirrored_pool()
  for value in range(6):
    step(float(value))
  saved = _local_contents(strategy, pool)
  path = tf.train.Checkpoint(pool=pool).save(str(tmp_path / "ckpt"))
  strategy, restored, _ = _mirrored_pool()
  tf.train.Checkpoint(pool=restored).restore(path).assert_consumed()
  got = _local_contents(strategy, restored)
  assert len(got) == 2 and not np.array_equal(saved[0][0], saved[1][0])
  for want_replica, got_replica in zip(saved, got):
    assert len(want_replica) == len(got_replica) == 4
    for want, image in zip(want_replica, got_replica):
      np.testing.assert_array_equal(image, want)


def test_fixed_size_storage_makes_the_same_choices_and_checkpoints_alike(tmp_path):
  """The fixed-shape layout (crops of one size, what XLA compiles) returns and stores what the
  flat one does, and their checkpoints restore into each other."""
  flat, fixed = image_pool.ImagePool(3), image_pool.ImagePool(3, image_shape=[2, 2, 3])
  for i in range(12):
    want = flat.query(_batch(i), tf.constant([3, i]))
    np.testing.assert_array_equal(fixed.query(_batch(i), tf.constant([3, i])), want)
  assert [c[0, 0, 0] for c in _contents(fixed)] == [c[0, 0, 0] for c in _contents(flat)]
  for source, target in ((fixed, image_pool.ImagePool(3)),
                         (flat, image_pool.ImagePool(3, image_shape=[2, 2, 3]))):
    path = tf.train.Checkpoint(pool=source).save(str(tmp_path / f"{id(source)}" / "c"))
    tf.train.Checkpoint(pool=target).restore(path).assert_consumed()
    assert [c.tolist() for c in _contents(target)] == [c.tolist() for c in _contents(source)]
  other = image_pool.ImagePool(3, image_shape=[4, 4, 3])
  with pytest.raises(tf.errors.InvalidArgumentError, match="images of another size"):
    tf.train.Checkpoint(pool=other).restore(path)
