"""Reading and writing image files for translation, with Pillow.

Every image becomes uint8 RGB at its displayed size (EXIF orientation applied). Alpha is split
off and handed back so the writer can re-attach it unchanged: the model translates colour, not
transparency. Writes are atomic (temp file + rename), so an interrupted run never leaves a
half-written output that a re-run would mistake for a finished one.
"""

import os
import tempfile
import warnings

import numpy as np
from PIL import Image, ImageOps

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF"}
ALPHA_FORMATS = ("png", "webp", "tif")


class ImageReadError(Exception):
  """A file that is not a readable image, or is over Pillow's decompression-bomb limit."""


def is_image_name(name):
  return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def _to_uint8(array):
  """16-bit and 32-bit integer or float greyscale -> 8 bits, by the range the mode implies."""
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.floating):
    return np.clip(np.round(array), 0, 255).astype(np.uint8)
  return np.clip(np.round(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def read_image(path):
  """(rgb uint8 [H, W, 3], alpha uint8 [H, W] or None); first frame of animations."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        image.load()
        return _split_modes(image)
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning,
          Image.DecompressionBombError) as e:
    raise ImageReadError(f"{type(e).__name__}: {e}") from e


def _split_modes(image):
  mode = image.mode
  if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    grey = _to_uint8(np.asarray(image))
    return np.repeat(grey[..., None], 3, axis=-1), None
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode == "P" and "transparency" in image.info)
  if has_alpha:
    rgba = np.asarray(image.convert("RGBA"))
    return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
  return np.asarray(image.convert("RGB")), None


def output_format(input_path, requested):
  """`auto`: jpg for jpg inputs, png otherwise."""
  if requested != "auto":
    return requested
  return "jpg" if input_path.lower().endswith((".jpg", ".jpeg")) else "png"


def save_image(f, rgb, alpha, fmt):
  """Encodes `rgb` (plus `alpha` where the format keeps it) into the file object `f`."""
  image = Image.fromarray(rgb)
  if alpha is not None and fmt in ALPHA_FORMATS:
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
  image.save(f, FORMATS[fmt], **({"quality": 95} if fmt == "jpg" else {}))


def write_image(path, rgb, alpha, fmt):
  """Atomically writes `rgb` (plus `alpha` where the format keeps it)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "wb") as f:
      save_image(f, rgb, alpha, fmt)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
