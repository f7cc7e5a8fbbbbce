"""PatchNCE against a PyTorch re-implementation of its authors' loss, same weights and patches."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import load_tool

from cyclegan import patch_nce

torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")
torch_reference = load_tool("torch_reference")


def _features(seed, batch=2):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(batch, h, w, c)).astype(np.float32)
          for h, w, c in ((10, 12, 3), (9, 8, 16), (5, 6, 32))]


def _copy_heads(theirs, ours):
  for (first, second), torch_head in zip(ours.heads, theirs.heads):
    for dense, linear in ((first, torch_head[0]), (second, torch_head[2])):
      dense.kernel.assign(linear.weight.detach().numpy().T)
      dense.bias.assign(linear.bias.detach().numpy())


def test_loss_and_gradients_equal_the_authors():
  """Same features, heads and patch positions: the per-layer loss and the gradients for the
  query features and every head weight, in float32 (within 1e-5 relative)."""
  queries, keys = _features(0), _features(1)
  torch.manual_seed(0)
  theirs = torch_reference.PatchSampler(units=16)
  t_queries = [torch.tensor(q.transpose(0, 3, 1, 2), requires_grad=True) for q in queries]
  t_keys = [torch.tensor(k.transpose(0, 3, 1, 2)) for k in keys]
  key_samples, ids = theirs(t_keys, num_patches=40)
  query_samples, _ = theirs(t_queries, 40, ids)
  losses = [torch_reference.patch_nce_loss(q, k, 2).mean()
            for q, k in zip(query_samples, key_samples)]
  sum(losses).backward()

  ours = patch_nce.PatchHeads(units=16)
  ours(keys, [tf.constant(i.numpy()) for i in ids])  # builds
  _copy_heads(theirs, ours)
  ids = [tf.constant(i.numpy()) for i in ids]
  queries = [tf.Variable(q) for q in queries]
  with tf.GradientTape() as tape:
    got = [tf.reduce_mean(patch_nce.patch_nce_loss(q, k, 2))
           for q, k in zip(ours(queries, ids), ours(keys, ids))]
    total = tf.add_n(got)
  weights = [w for first, second in ours.heads for w in (*first.weights, *second.weights)]
  grads = tape.gradient(total, queries + weights)
  np.testing.assert_allclose([float(g) for g in got], [float(l.detach()) for l in losses],
                             rtol=1e-5)
  want = [q.grad.numpy().transpose(0, 2, 3, 1) for q in t_queries]
  want += [p.grad.numpy().T if p.ndim == 2 else p.grad.numpy() for head in theirs.heads
           for p in (head[0].weight, head[0].bias, head[2].weight, head[2].bias)]
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g.numpy(), w, atol=1e-5 * np.abs(w).max())


def test_a_perfect_match_beats_a_shuffled_one():
  """Keys equal to queries give a low loss; the same keys at shuffled positions a high one
  (so the loss does see which position is whose)."""
  x = tf.math.l2_normalize(tf.random.stateless_normal([2 * 64, 32], [0, 1]), axis=1)
  same = patch_nce.patch_nce_loss(x, x, 2)
  shuffled = tf.reshape(tf.reverse(tf.reshape(x, [2, 64, 32]), [1]), [-1, 32])
  assert float(tf.reduce_max(same)) < 1.0 < float(tf.reduce_min(
      patch_nce.patch_nce_loss(x, shuffled, 2)))


def test_patch_ids_are_distinct_shared_and_seeded():
  features = [tf.zeros([2, 10, 12, 3]), tf.zeros([2, 3, 4, 8])]
  ids = patch_nce.sample_patch_ids(features, tf.constant([1, 2]), num_patches=50)
  assert ids[0].shape == (50,) and len(set(ids[0].numpy())) == 50 and max(ids[0].numpy()) < 120
  assert sorted(ids[1].numpy()) == list(range(12))  # fewer positions than patches: all
  again = patch_nce.sample_patch_ids(features, tf.constant([1, 2]), num_patches=50)
  other = patch_nce.sample_patch_ids(features, tf.constant([1, 3]), num_patches=50)
  assert (again[0].numpy() == ids[0].numpy()).all() and (other[0].numpy() != ids[0].numpy()).any()
