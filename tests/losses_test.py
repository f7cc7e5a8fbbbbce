"""Loss values against numpy, per example."""

import numpy as np
import pytest

from cyclegan import losses


def test_lsgan_is_mean_squared_error_per_example():
  logits = np.random.default_rng(0).normal(size=(3, 4, 4, 1)).astype(np.float32)
  got_real = losses.adversarial_loss(logits, True, "lsgan").numpy()
  got_fake = losses.adversarial_loss(logits, False, "lsgan").numpy()
  np.testing.assert_allclose(got_real, ((logits - 1) ** 2).mean((1, 2, 3)), rtol=1e-6)
  np.testing.assert_allclose(got_fake, (logits**2).mean((1, 2, 3)), rtol=1e-6)


def test_vanilla_is_binary_cross_entropy_with_logits():
  logits = np.random.default_rng(1).normal(size=(2, 3, 3, 1)).astype(np.float32)
  sigmoid = 1 / (1 + np.exp(-logits.astype(np.float64)))
  np.testing.assert_allclose(losses.adversarial_loss(logits, True, "vanilla").numpy(),
                             -np.log(sigmoid).mean((1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(losses.adversarial_loss(logits, False, "vanilla").numpy(),
                             -np.log(1 - sigmoid).mean((1, 2, 3)), rtol=1e-5)


def test_discriminator_loss_is_half_the_sum():
  real = np.full((2, 2, 2, 1), 0.5, np.float32)
  fake = np.full((2, 2, 2, 1), 0.25, np.float32)
  np.testing.assert_allclose(losses.discriminator_loss(real, fake).numpy(),
                             [0.5 * (0.25 + 0.0625)] * 2, rtol=1e-6)


def test_l1_per_example():
  x = np.zeros((2, 2, 2, 3), np.float32)
  y = np.stack([np.full((2, 2, 3), 1.0), np.full((2, 2, 3), -0.5)]).astype(np.float32)
  np.testing.assert_allclose(losses.l1_loss(x, y).numpy(), [1.0, 0.5])


def test_unknown_gan_mode_is_an_error():
  with pytest.raises(ValueError, match="gan_mode"):
    losses.adversarial_loss(np.zeros((1, 1, 1, 1), np.float32), True, "wgan")
