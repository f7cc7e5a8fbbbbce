"""Decoding in the graph turns images upright by EXIF, as Pillow does for translation."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from cyclegan import images
from conftest import oriented_jpeg


def _encode(image, fmt, orientation):
  exif = Image.Exif()
  exif[0x0112] = orientation
  buf = io.BytesIO()
  image.save(buf, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
  return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_every_orientation_as_pillow_turns_it(fmt):
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8))
  decode = tf.function(images.decode_rgb)
  for orientation in range(1, 9):
    data = _encode(image, fmt, orientation)
    assert int(images.exif_orientation(tf.constant(data))) == orientation
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = decode(tf.constant(data)).numpy()
    assert got.shape == want.shape, orientation
    if fmt != "JPEG":  # Lossless: the same pixels. JPEG decoders differ a little (below).
      np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("orientation", [3, 6])
def test_a_phone_style_jpeg_comes_out_upright(tmp_path, orientation):
  """TF's and Pillow's JPEG decoders differ by ~1 level on average; a wrong turn by ~60."""
  upright = oriented_jpeg(tmp_path / "photo.jpg", orientation)
  got = images.decode_rgb(tf.constant((tmp_path / "photo.jpg").read_bytes())).numpy()
  assert got.shape == upright.shape == (180, 256, 3)
  assert np.abs(got.astype(int) - upright).mean() < 2.5
  rgb, alpha = images.read_image(tmp_path / "photo.jpg")
  np.testing.assert_array_equal(rgb, upright)
  assert alpha is None


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\x00\x02Exif",
                                  b"\x89PNG\r\n\x1a\n\x00\x00\x00\xffeXIf", b"RIFF\0\0\0\0WEBP"])
def test_missing_or_malformed_exif_reads_as_upright(data):
  assert int(tf.function(images.exif_orientation)(tf.constant(data))) == 1


def test_through_unit_range_keeps_every_pixel_value_and_applies_the_translation():
  pixels = tf.reshape(tf.range(256, dtype=tf.int32), [1, 16, 16, 1])
  pixels = tf.cast(tf.tile(pixels, [1, 1, 1, 3]), tf.uint8)
  np.testing.assert_array_equal(images.through_unit_range(lambda x: x, pixels), pixels)
  np.testing.assert_array_equal(images.through_unit_range(lambda x: -x, pixels), 255 - pixels)
