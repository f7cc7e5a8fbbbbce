"""Horses (A) <-> zebras (B) at the reference recipe (TFDS cycle_gan/horse2zebra)."""


def get_config():
  # The reference code's defaults (including identity 0.5); see shared/REFERENCE.md.
  return dict(name="horse2zebra", dataset="horse2zebra")
