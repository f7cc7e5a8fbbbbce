"""What a request can get wrong, and the size limits, for every API (REST and gRPC).

Each API maps these to its own status: RequestError and ModelInputError are 400 /
INVALID_ARGUMENT, TooLarge is 413 / RESOURCE_EXHAUSTED.
"""

import io
import warnings

import tensorflow as tf
from PIL import Image


class RequestError(ValueError):
  """A request the client must fix: the message says what is wrong."""


class ModelInputError(RequestError):
  """The model rejected an input (e.g. bytes that are not an image): the client's fault."""


class TooLarge(Exception):
  """Over one of the server's size limits (body bytes, pixels)."""


def image_pixels(data):
  """Width x height from the header of encoded image bytes; None if Pillow cannot tell."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        return image.width * image.height
  except Image.DecompressionBombError:
    return float("inf")
  except Exception:  # Not an image Pillow knows: the model (or read_image) will say so.
    return None


def require_pixels_within(pixels, max_pixels, flag="--max_pixels"):
  """Raises TooLarge for an image of more than max_pixels pixels (the limit set by `flag`)."""
  if pixels > max_pixels:
    raise TooLarge(f"an image has {pixels} pixels, more than the server's limit of "
                   f"{max_pixels} ({flag}); downscale it, or use cyclegan.translate, "
                   "which has no limit")


def check_pixels(inputs, signature, max_pixels):
  """Raises TooLarge if any image in the inputs has more than max_pixels pixels."""
  for name, array in inputs.items():
    if signature.inputs[name].dtype == tf.string:
      sizes = [image_pixels(v) for v in array.reshape(-1)]
      require_pixels_within(max((s for s in sizes if s is not None), default=0), max_pixels)
    elif array.ndim == 4:
      require_pixels_within(array.shape[1] * array.shape[2], max_pixels)
