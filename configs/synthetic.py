"""The built-in default: the synthetic warm->cool scenes, a small model, minutes on 2 CPU cores.

Small everything (64 px crops, ngf/ndf 16, 6 blocks) so that `python -m cyclegan.train` with no
flags finishes in well under 10 minutes on a laptop CPU and still learns the hue rotation.
"""


def get_config():
  return dict(
      name="synthetic",
      dataset="synthetic",
      preprocess="resize_and_crop",
      load_size=72,
      crop_size=64,
      ngf=16,
      ndf=16,
      n_blocks=6,
      epochs=3,
      epochs_decay=2,
      checkpoint_every=250,
      log_every=25,
      image_every=250,
  )
