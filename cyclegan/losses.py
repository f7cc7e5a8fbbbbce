"""CycleGAN losses, per example.

Every function returns one value per example (shape [batch]) so that the train step can divide
by the *global* batch size (as tf.nn.compute_average_loss does) and give the same gradients on one
device or many.
"""

import tensorflow as tf


def _mean_per_example(x):
  return tf.reduce_mean(x, axis=list(range(1, x.shape.rank)))


def adversarial_loss(logits, target_is_real, gan_mode="lsgan"):
  """LSGAN: mean squared error to 1 (real) or 0 (fake); vanilla: BCE with logits."""
  logits = tf.cast(logits, tf.float32)
  target = tf.ones_like(logits) if target_is_real else tf.zeros_like(logits)
  if gan_mode == "lsgan":
    return _mean_per_example(tf.square(logits - target))
  if gan_mode == "vanilla":
    return _mean_per_example(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))
  raise ValueError(f"unknown gan_mode {gan_mode!r}")


def l1_loss(x, y):
  return _mean_per_example(tf.abs(tf.cast(x, tf.float32) - tf.cast(y, tf.float32)))


def discriminator_loss(real_logits, fake_logits, gan_mode="lsgan"):
  """The reference halves the discriminator loss so D learns slower than G."""
  return 0.5 * (adversarial_loss(real_logits, True, gan_mode) +
                adversarial_loss(fake_logits, False, gan_mode))
