"""The reference's history of generated images, kept in the graph.

Discriminators see a mix of current and past fakes (Shrivastava et al. 2017). The pool lives in
variables so that it runs inside the compiled train step, is saved in checkpoints, and, being
sync-on-read, is private to each replica as in the reference's one-process-per-GPU setup.
Randomness is stateless and keyed by the caller's seed, so a resumed run makes the same choices.
"""

import tensorflow as tf


class ImagePool(tf.Module):

  def __init__(self, pool_size, image_shape, name=None):
    super().__init__(name=name)
    self.pool_size = pool_size
    local = dict(trainable=False,
                 synchronization=tf.VariableSynchronization.ON_READ,
                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.images = tf.Variable(tf.zeros([pool_size, *image_shape]), name="images", **local)
    self.count = tf.Variable(0, dtype=tf.int32, name="count", **local)

  def query(self, images, seed):
    """Returns a batch like `images`; stores them. seed: int32 [2], new for every call."""
    if self.pool_size == 0:
      return images
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    outputs = tf.TensorArray(tf.float32, size=batch, element_shape=images.shape[1:])
    for i in tf.range(batch):
      image = images[i]
      draw_seed = tf.random.experimental.stateless_fold_in(seed, i)
      coin = tf.random.stateless_uniform([], draw_seed)
      slot = tf.random.stateless_uniform(
          [], tf.random.experimental.stateless_fold_in(draw_seed, 1),
          maxval=self.pool_size, dtype=tf.int32)
      if self.count < self.pool_size:
        self._store(self.count, image)
        self.count.assign_add(1)
        out = image
      elif coin > 0.5:
        out = tf.gather(self.images, slot)
        self._store(slot, image)
      else:
        out = image
      outputs = outputs.write(i, out)
    return outputs.stack()

  def _store(self, slot, image):
    # Sync-on-read variables take whole assignments only (no scatter).
    self.images.assign(tf.tensor_scatter_nd_update(self.images, slot[None, None], image[None]))
