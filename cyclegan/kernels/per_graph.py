"""Values made once per traced graph (constants, transformed kernels) instead of per call."""

import weakref

import tensorflow as tf

# Per graph being traced: key -> what once_per_graph made for it.
_PER_GRAPH = weakref.WeakKeyDictionary()


def once_per_graph(key, make, name, after=None):
  """make() once per traced graph and key (eagerly, on every call), in name scope `name`,
  after the tensors `after` (None: after nothing, wherever the first call stands)."""
  if tf.executing_eagerly():
    return make()
  per_graph = _PER_GRAPH.setdefault(tf.compat.v1.get_default_graph(), {})
  if key not in per_graph:
    with tf.control_dependencies(after), tf.name_scope(name):
      per_graph[key] = make()
  return per_graph[key]
