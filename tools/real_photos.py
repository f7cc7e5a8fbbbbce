"""Real photos from ../shared/data for the tools: different scenes, resized to one side."""

import os

import numpy as np
from PIL import Image

from cyclegan import images as images_lib

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
# Four photos of very different content and colour (horse, Monet, zebra, landscape photo).
PICKS = [("horse2zebra/testA", 0), ("monet2photo/testA", 1), ("horse2zebra/testB", 2),
         ("monet2photo/testB", 3)]


def photos(side, count=4, data=DATA):
  """The first `count` of PICKS as uint8 [side, side, 3] arrays."""
  return [np.asarray(Image.fromarray(images_lib.read_image(
      images_lib.find_images(os.path.join(data, folder))[i])[0]).resize(
          (side, side), Image.BICUBIC)) for folder, i in PICKS[:count]]
