"""Reading and writing image files: with Pillow for translation, in the graph for training
and for the SavedModel's bytes signature.

Every image becomes uint8 RGB at its displayed size: EXIF orientation is applied on both paths,
so a phone photo is upright wherever it goes. Alpha is split off and handed back so the writer
can re-attach it unchanged: the model translates colour, not transparency. Writes are atomic
(temp file + rename), so an interrupted run never leaves a half-written output that a re-run
would mistake for a finished one.
"""

import os
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from cyclegan import files as files_lib

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# What TensorFlow's decoders read (training, serving_default): all but TIFF.
GRAPH_EXTENSIONS = tuple(e for e in EXTENSIONS if e not in (".tif", ".tiff"))
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF"}
ALPHA_FORMATS = ("png", "webp", "tif")
# Pillow refuses images over its decompression-bomb limit (89 MP); tiling keeps memory bounded
# for larger ones, so read up to 120 MP (a 12000x8000 photo is 96 MP). Larger is refused.
Image.MAX_IMAGE_PIXELS = 120_000_000


class ImageReadError(Exception):
  """A file that is not a readable image, or is over Pillow's decompression-bomb limit."""


def is_image_name(name, extensions=EXTENSIONS):
  return not name.startswith(".") and name.lower().endswith(extensions)


def find_images(folder, extensions=EXTENSIONS):
  """Image files under `folder`, recursively, sorted; hidden files and folders skipped."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, f) for f in sorted(files) if is_image_name(f, extensions)]
  return found


def to_unit_range(pixels):
  """uint8 pixels -> float32 in [-1, 1], the range the networks take and give."""
  return tf.cast(pixels, tf.float32) / 127.5 - 1.0


def to_uint8(images):
  """[-1, 1] -> uint8 pixels, rounded and clipped."""
  return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def through_unit_range(translate, pixels):
  """uint8 pixels -> uint8 pixels through `translate`, a function of [-1, 1] images: the uint8
  contract of exports and of in-process translation, kept in one place."""
  return to_uint8(translate(to_unit_range(pixels)))


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


def header_shape(path):
  """(height, width, 3) from the file's header, without decoding; (0, 0, 3) if unreadable."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        return image.height, image.width, 3
  except Exception:  # pylint: disable=broad-except  (read_image reports it)
    return 0, 0, 3


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
  with files_lib.atomic_open(path, "wb") as f:
    save_image(f, rgb, alpha, fmt)


# --- In the graph --------------------------------------------------------------------------

# Where EXIF sits: JPEG APP1 before the image data (after JFIF, ICC profiles, ...), PNG eXIf and
# WebP EXIF chunks before the image chunks as Pillow and phones write them.
_EXIF_SCAN_BYTES = 1 << 18
_ORIENTATION_TAG = 0x0112


def exif_orientation(encoded):
  """The EXIF orientation (1-8) of an encoded JPEG, PNG or WebP, as int32; 1 when absent.

  Graph ops only (TF Serving runs no Python): walk the file's segments or chunks to the EXIF
  block, read its TIFF header's byte order, and find tag 0x0112 among IFD0's entries. Anything
  malformed reads as 1, the image as stored.
  """
  data = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, 0, _EXIF_SCAN_BYTES), tf.uint8),
                 tf.int32)
  n = tf.size(data)
  padded = tf.concat([data, tf.zeros([16], tf.int32)], 0)
  byte = lambda i: tf.gather(padded, tf.clip_by_value(i, 0, n + 15))
  is_text = lambda i, text: tf.reduce_all(byte(i + tf.range(len(text))) == list(text))
  big16 = lambda i: byte(i) * 256 + byte(i + 1)
  big32 = lambda i: big16(i) * 65536 + big16(i + 2)
  little32 = lambda i: byte(i) + byte(i + 1) * 256 + byte(i + 2) * 65536 + byte(i + 3) * 16777216

  def find(start, header, tiff_at, next_at, more=lambda pos: True):
    """The TIFF header's offset in the block that `tiff_at` recognises, or -1."""
    def searching(pos, tiff):
      return (tiff < 0) & (pos > 0) & (pos + header <= n) & more(pos)
    def step(pos, tiff):
      return next_at(pos), tiff_at(pos)
    return tf.while_loop(searching, step, (start, tf.constant(-1)))[1]

  jpeg = lambda: find(  # Segments FF xx + big-endian length, up to start of scan (FF DA).
      2, 4, lambda p: tf.where((byte(p + 1) == 0xE1) & is_text(p + 4, b"Exif\0\0"), p + 10, -1),
      lambda p: p + 2 + tf.maximum(big16(p + 2), 2),
      lambda p: (byte(p) == 0xFF) & (byte(p + 1) != 0xDA))
  png = lambda: find(  # Chunks: big-endian length, type, data, CRC.
      8, 8, lambda p: tf.where(is_text(p + 4, b"eXIf"), p + 8, -1), lambda p: p + 12 + big32(p))
  webp = lambda: find(  # RIFF chunks: type, little-endian length, data padded to even.
      12, 8, lambda p: tf.where(is_text(p, b"EXIF"),
                                tf.where(is_text(p + 8, b"Exif\0\0"), p + 14, p + 8), -1),
      lambda p: p + 8 + little32(p + 4) + little32(p + 4) % 2)
  tiff = tf.case([(is_text(0, b"\xff\xd8"), jpeg),
                  (is_text(0, b"\x89PNG\r\n\x1a\n"), png),
                  (is_text(0, b"RIFF") & is_text(8, b"WEBP"), webp)],
                 default=lambda: tf.constant(-1))

  little = byte(tiff) == 0x49  # "II": little-endian; "MM": big-endian.
  u16 = lambda i: tf.where(little, byte(i) + byte(i + 1) * 256, big16(i))
  u32 = lambda i: tf.where(little, u16(i) + u16(i + 2) * 65536, u16(i) * 65536 + u16(i + 2))
  ifd = tiff + u32(tiff + 4)
  entries = ifd + 2 + 12 * tf.range(tf.clip_by_value(u16(ifd), 0, 1000))
  values = tf.where(u16(entries) == _ORIENTATION_TAG, u16(entries + 8), 0)
  orientation = tf.reduce_max(tf.concat([values, [0]], 0))
  valid = (tiff >= 0) & (u16(tiff + 2) == 42) & (orientation >= 1) & (orientation <= 8)
  return tf.where(valid, orientation, 1)


def apply_orientation(image, orientation):
  """[H, W, C] as displayed for an EXIF orientation (what PIL's exif_transpose does)."""
  transpose = lambda x: tf.transpose(x, [1, 0, 2])
  return tf.switch_case(orientation - 1, [
      lambda: image,                          # 1: as stored
      lambda: image[:, ::-1],                 # 2: mirrored
      lambda: image[::-1, ::-1],              # 3: rotated 180
      lambda: image[::-1],                    # 4: flipped
      lambda: transpose(image),               # 5: transposed
      lambda: transpose(image)[:, ::-1],      # 6: rotated 90 clockwise to display
      lambda: transpose(image)[::-1, ::-1],   # 7: transversed
      lambda: transpose(image)[::-1],         # 8: rotated 90 anticlockwise to display
  ])


def decode_stored(encoded):
  """Any format TF decodes (JPEG, PNG, GIF, BMP, WebP), any mode -> uint8 RGB as stored."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)


def decode_rgb(encoded):
  """decode_stored, turned upright by the EXIF orientation: [H, W, 3]."""
  image = apply_orientation(decode_stored(encoded), exif_orientation(encoded))
  image.set_shape([None, None, 3])
  return image
