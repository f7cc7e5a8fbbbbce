"""Monet paintings (A) <-> landscape photos (B) at the reference recipe (TFDS cycle_gan/monet2photo)."""


def get_config():
  # Everything else is the reference default: 256 crops of 286 resizes, ResNet-9, LSGAN,
  # lambda 10, identity 0.5, pool 50, Adam 2e-4/0.5, 100 + 100 epochs, batch 1.
  return dict(name="monet2photo", dataset="monet2photo")
