"""The reference's history of generated images, kept in the graph.

Discriminators see a mix of current and past fakes (Shrivastava et al. 2017). The pool lives in
variables so that it runs inside the traced train step and is saved in checkpoints. Where the
crops have one size (`image_shape`), the images sit in one variable of fixed shape, which XLA
compiles (`--jit_compile --jit_scope step`); otherwise they are stored flattened, back to back,
each with its own shape, so the pool works for every preprocessing mode, also when image sizes
vary (as the reference's list of tensors does). Both keep the same checkpoint format.

Each replica keeps its own pool (sync-on-read variables), as in the reference's one process
per GPU, and a checkpoint holds every replica's pool, not only the first one's: checkpoints
save sync-on-read variables as one value, so the pool serializes itself. Randomness is
stateless and keyed by the caller's seed, so a resumed run makes the same choices.
"""

import tensorflow as tf

from cyclegan import seeds


class ImagePool(tf.Module):

  def __init__(self, pool_size, image_shape=None, name=None):
    """image_shape: [height, width, channels] where every image has it (fixed-size crops)."""
    super().__init__(name=name)
    self.pool_size = pool_size
    self.image_shape = list(image_shape) if image_shape else None
    self._strategy = tf.distribute.get_strategy()
    local = dict(trainable=False,
                 synchronization=tf.VariableSynchronization.ON_READ,
                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    # Untracked: _serialize_to_tensors saves them, for every replica.
    if self.image_shape:
      self._images = self._no_dependency(
          tf.Variable(tf.zeros([pool_size, *self.image_shape]), name="images", **local))
    else:
      self._pixels = self._no_dependency(
          tf.Variable(tf.zeros([0]), shape=[None], name="pixels", **local))
      self._shapes = self._no_dependency(
          tf.Variable(tf.zeros([pool_size, 3], tf.int32), name="shapes", **local))
    self.count = self._no_dependency(tf.Variable(0, dtype=tf.int32, name="count", **local))

  def query(self, images, seed):
    """Returns a batch like `images`; stores them. seed: int [2] from seeds.fold_in, new for
    every call.

    While the pool fills, every image comes back and is stored. Once it is full, each image
    has an even chance to be swapped for a random stored one (which it replaces in its slot)
    or to come back itself, leaving the pool as it was.
    """
    if self.pool_size == 0:
      return images
    if images.shape[0] is None:
      raise ValueError("ImagePool.query needs a batch of known size (drop_remainder=True)")
    images = tf.cast(images, tf.float32)

    def one(i):  # Explicit control flow: the train step is traced without AutoGraph.
      image = images[i]
      draw_seed = seeds.fold_in(seed, i)
      coin = seeds.integer(draw_seed, 2)
      slot = seeds.integer(seeds.fold_in(draw_seed, 1), self.pool_size)

      def fill():
        self._store(self.count, image)
        self.count.assign_add(1)
        return image

      def swap():
        out = self.image(slot)
        self._store(slot, image)
        return out

      return tf.cond(self.count < self.pool_size, fill,
                     lambda: tf.cond(coin > 0, swap, lambda: image))

    # Unrolled over the batch: a While loop cost about 0.25 s of the built-in default's first
    # step (its 400 ops traced, its functions instantiated). A stored image may have another
    # size than `images` (batch 1, variable-size modes).
    stacked = tf.stack([one(i) for i in range(images.shape[0])])
    stacked.set_shape([images.shape[0], None, None, images.shape[-1]])
    return stacked

  def _span(self, slot):
    sizes = tf.reduce_prod(self._shapes, axis=1)
    start = tf.reduce_sum(sizes[:slot])
    return start, start + sizes[slot]

  def image(self, slot):
    """The image stored in `slot` (this replica's)."""
    if self.image_shape:
      return tf.gather(self._images, slot)  # XLA slices only at constant offsets; gathers at any
    start, end = self._span(slot)
    return tf.reshape(self._pixels[start:end], self._shapes[slot])

  def _store(self, slot, image):
    # Sync-on-read variables take whole assignments only (no scatter), and sizes may differ.
    if self.image_shape:
      self._images.assign(tf.tensor_scatter_nd_update(self._images, slot[None, None],
                                                      image[None]))
      return
    start, end = self._span(slot)
    self._pixels.assign(tf.concat(
        [self._pixels[:start], tf.reshape(image, [-1]), self._pixels[end:]], axis=0))
    self._shapes.assign(tf.tensor_scatter_nd_update(self._shapes, slot[None, None],
                                                    tf.shape(image)[None]))

  def _replica_values(self):
    """Each replica's (flat pixels, shapes, count): the checkpoint's format, either layout."""
    local = self._strategy.experimental_local_results
    if not self.image_shape:
      return [(p.read_value(), s.read_value(), c.read_value()) for p, s, c in
              zip(local(self._pixels), local(self._shapes), local(self.count))]
    out = []
    for images, count in zip(local(self._images), local(self.count)):
      count = count.read_value()
      stored = tf.range(self.pool_size) < count
      shapes = tf.where(stored[:, None], tf.constant([self.image_shape]), 0)
      out.append((tf.reshape(images[:count], [-1]), shapes, count))
    return out

  def _serialize_to_tensors(self):
    pixels, shapes, counts = zip(*self._replica_values())
    return {"pixels": tf.concat(pixels, 0),
            "lengths": tf.stack([tf.size(p, out_type=tf.int64) for p in pixels]),
            "shapes": tf.stack(shapes), "count": tf.stack(counts)}

  def _restore_from_tensors(self, restored_tensors):
    """Replica i gets saved pool i (i modulo the saved count when the replica count changed)."""
    saved = tf.split(restored_tensors["pixels"], restored_tensors["lengths"])
    local = self._strategy.experimental_local_results
    ops = []
    for i, count in enumerate(local(self.count)):
      j = i % len(saved)
      shapes, saved_count = restored_tensors["shapes"][j], restored_tensors["count"][j]
      ops.append(count.assign(saved_count))
      if not self.image_shape:
        ops += [local(self._pixels)[i].assign(saved[j]), local(self._shapes)[i].assign(shapes)]
        continue
      stored = tf.range(self.pool_size) < saved_count
      ops.append(tf.debugging.assert_equal(
          tf.where(stored[:, None], shapes, self.image_shape), self.image_shape,
          message=f"the checkpoint's image pool holds images of another size than "
                  f"{self.image_shape}"))
      padding = self.pool_size * tf.reduce_prod(self.image_shape) - tf.size(saved[j])
      ops.append(local(self._images)[i].assign(tf.reshape(
          tf.pad(saved[j], [[0, padding]]), [self.pool_size, *self.image_shape])))
    return tf.group(ops)
