"""PatchNCE (Park et al., ECCV 2020): a translation keeps, at each position, what its input had
there. Features of the translated image (queries) and of its input (keys) at the same sampled
positions go through one small MLP head per encoder layer; each query must pick its own
position's key among the keys of every sampled position of the same image.
"""

import keras
import tensorflow as tf

from cyclegan import seeds

NUM_PATCHES = 256
TEMPERATURE = 0.07
_NORM_EPSILON = 1e-7  # added to the L2 norm, as the authors' Normalize does
_MASKED = -10.0  # the authors' logit for a query against its own position among the negatives


def sample_patch_ids(features, seed, num_patches=NUM_PATCHES):
  """Per feature map, `num_patches` distinct positions (all, if it has fewer), in random order,
  the same for every image of the batch; a pure function of `seed` (shape [2], seeds.fold_in's)."""
  ids = []
  for i, feature in enumerate(features):
    shape = tf.shape(feature)
    ids.append(seeds.permutation(seeds.fold_in(seed, i), shape[1] * shape[2])[:num_patches])
  return ids


@keras.saving.register_keras_serializable(package="cyclegan")
class PatchHeads(keras.layers.Layer):
  """The authors' netF (mlp_sample): per encoder layer Dense(units)-ReLU-Dense(units) on the
  features at the sampled positions, then L2-normalised. Built at the first call, from the
  layers' widths, as theirs; Xavier normal weights with gain 0.02, zero biases."""

  def __init__(self, units=256, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.units, self.seed = units, seed
    self.first, self.second = [], []  # per layer: Dense(units), then ReLU, then Dense(units)

  @property
  def heads(self):
    """[(first, second)] per encoder layer."""
    return list(zip(self.first, self.second))

  def build(self, feature_shapes):
    for i, shape in enumerate(feature_shapes):
      for j, (dense_layers, width) in enumerate(((self.first, shape[-1]),
                                                 (self.second, self.units))):
        dense = keras.layers.Dense(
            self.units, name=f"head{i}_dense{j}", dtype=self.dtype_policy,
            kernel_initializer=keras.initializers.VarianceScaling(
                0.02**2, "fan_avg", "untruncated_normal", seed=self.seed * 1000 + 2 * i + j))
        dense.build((None, width))
        dense_layers.append(dense)

  def call(self, features, patch_ids):
    """features: [B, H, W, C] per layer; patch_ids: positions per layer. Returns per layer
    [B * P, units] in float32, image-major as the authors flatten them."""
    samples = []
    for feature, ids, first, second in zip(features, patch_ids, self.first, self.second):
      shape = tf.shape(feature)
      flat = tf.reshape(feature, [shape[0], shape[1] * shape[2], feature.shape[-1]])
      x = tf.reshape(tf.gather(flat, ids, axis=1), [-1, feature.shape[-1]])
      x = tf.cast(second(tf.nn.relu(first(x))), tf.float32)
      samples.append(x / (tf.norm(x, axis=1, keepdims=True) + _NORM_EPSILON))
    return samples


def patch_nce_loss(queries, keys, batch_size, temperature=TEMPERATURE):
  """Per image, the mean over its patches of the cross entropy of picking the key at the
  query's own position among its image's keys (queries, keys: [batch_size * P, D]). Keys get
  no gradient."""
  keys = tf.stop_gradient(keys)
  dim = queries.shape[-1]
  positive = tf.reduce_sum(queries * keys, axis=1, keepdims=True)  # [N, 1]
  queries = tf.reshape(queries, [batch_size, -1, dim])
  keys = tf.reshape(keys, [batch_size, -1, dim])
  negative = tf.matmul(queries, keys, transpose_b=True)  # [B, P, P]
  patches = tf.shape(negative)[1]
  negative = tf.where(tf.eye(patches, dtype=tf.bool), _MASKED, negative)
  logits = tf.concat([positive, tf.reshape(negative, [-1, patches])], axis=1) / temperature
  per_patch = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.zeros(tf.shape(logits)[:1], tf.int32), logits=logits)
  return tf.reduce_mean(tf.reshape(per_patch, [batch_size, -1]), axis=1)


def mirrored_if(flipped, x):
  """x flipped left-right where `flipped` (a bool, or a scalar bool tensor), else x."""
  if flipped is False:
    return x
  return tf.where(flipped, tf.reverse(x, [2]), x)


def nce_loss(encoder, heads, source, translated, seed, lambda_nce=1.0, flipped=False,
             num_patches=NUM_PATCHES, patch_ids=None, keys=None):
  """lambda_nce x PatchNCE per image, averaged over the encoder's layers: the queries from
  `translated`, the keys from its `source`. flipped: `translated` is of the source flipped
  left-right (FastCUT's equivariance), so its features are flipped back first. patch_ids:
  positions per layer, instead of drawing them from `seed`. keys: the encoder's features of
  `source` where the caller has them already."""
  queries = [mirrored_if(flipped, q) for q in encoder(translated, training=True)]
  keys = encoder(source, training=True) if keys is None else keys
  ids = patch_ids if patch_ids is not None else sample_patch_ids(keys, seed, num_patches)
  key_samples, query_samples = heads(keys, ids), heads(queries, ids)
  batch_size = tf.shape(source)[0]
  per_layer = [patch_nce_loss(q, k, batch_size) * lambda_nce
               for q, k in zip(query_samples, key_samples)]
  return tf.add_n(per_layer) / len(per_layer)
