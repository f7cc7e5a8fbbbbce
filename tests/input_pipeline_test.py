"""Sources (built-in, folders, TFDS under mock_data), preprocessing and the resumable stream."""

import logging
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from cyclegan import images
from cyclegan import input_pipeline
from cyclegan import synthetic
from conftest import oriented_jpeg, tiny_config


def _save(path, array, mode=None, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  image.save(path, fmt)


@pytest.fixture
def awkward_folder(tmp_path):
  """trainA with every mode and format, a corrupt file and a hidden one; trainB plain."""
  rng = np.random.default_rng(0)
  rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  root = tmp_path / "data"
  _save(str(root / "trainA/rgb.jpg"), rgb(40, 30))
  _save(str(root / "trainA/grey.png"), rgb(20, 50), "L")
  _save(str(root / "trainA/rgba.png"), rgb(33, 33), "RGBA")
  _save(str(root / "trainA/palette.png"), rgb(31, 45), "P")
  _save(str(root / "trainA/nested/UPPER.JPEG"), rgb(50, 50))
  _save(str(root / "trainA/image.bmp"), rgb(17, 19))
  _save(str(root / "trainA/image.webp"), rgb(25, 64), fmt="WEBP")
  (root / "trainA/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
  (root / "trainA/notes.txt").write_text("not an image")
  (root / "trainA/.hidden.jpg").write_bytes(b"ignored")
  for i in range(3):
    _save(str(root / f"trainB/{i}.jpg"), rgb(64, 48))
  return root


def test_folder_skips_undecodable_files_with_one_warning_each(awkward_folder, tmp_path, caplog):
  config = tiny_config(tmp_path, dataset=str(awkward_folder))
  with caplog.at_level(logging.WARNING):
    domains = input_pipeline.load_domains(config)
  assert domains["trainA"].size == 7 and domains["trainB"].size == 3
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "broken.jpg" in warnings[0]
  for i in range(7):  # Every mode comes out as RGB.
    assert domains["trainA"].load(tf.constant(i)).shape[-1] == 3
  batch = next(iter(input_pipeline.train_dataset(config, domains)))
  assert batch["a"].shape == (1, 32, 32, 3) and batch["b"].shape == (1, 32, 32, 3)
  assert -1.0 <= float(tf.reduce_min(batch["a"])) and float(tf.reduce_max(batch["a"])) <= 1.0


def test_missing_or_empty_domain_is_a_clear_error(tmp_path):
  root = tmp_path / "data"
  _save(str(root / "trainA/a.png"), np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(input_pipeline.DataError, match="no trainB/ folder"):
    input_pipeline.load_domains(tiny_config(tmp_path, dataset=str(root)))
  os.makedirs(root / "trainB")
  (root / "trainB/bad.jpg").write_bytes(b"nope")
  with pytest.raises(input_pipeline.DataError, match="no readable images"):
    input_pipeline.load_domains(tiny_config(tmp_path, dataset=str(root)))


def test_unknown_dataset_name_lists_the_choices(tmp_path):
  with pytest.raises(input_pipeline.DataError, match="monet2photo"):
    input_pipeline.load_domains(tiny_config(tmp_path, dataset="monet3photo"))


def test_stream_from_step_k_equals_the_full_stream_skipped(tmp_path):
  config = tiny_config(tmp_path, batch_size=2, synthetic_train=6)
  domains = input_pipeline.load_domains(config)
  full = list(input_pipeline.train_dataset(config, domains).take(7).as_numpy_iterator())
  resumed = list(input_pipeline.train_dataset(config, domains, start_step=4).take(3)
                 .as_numpy_iterator())
  for want, got in zip(full[4:], resumed):
    np.testing.assert_array_equal(want["a"], got["a"])
    np.testing.assert_array_equal(want["b"], got["b"])


def test_training_stream_runs_no_autotune_thread(tmp_path):
  # Its iterator's destruction could wait up to a minute for that thread (TF 2.21).
  config = tiny_config(tmp_path)
  dataset = input_pipeline.train_dataset(config, input_pipeline.load_domains(config))
  assert dataset.options().autotune.enabled is False


def test_each_epoch_visits_every_image_once_in_a_new_order():
  ids = input_pipeline.example_indices(5, 3, 5, seed=0, start_example=0)
  rows = np.array(list(ids.take(10).as_numpy_iterator()))
  np.testing.assert_array_equal(rows[:, 0], np.arange(10))
  assert sorted(rows[:5, 1]) == list(range(5)) and sorted(rows[5:, 1]) == list(range(5))
  assert list(rows[:5, 1]) != list(rows[5:, 1])
  assert set(rows[:, 2]) == {0, 1, 2}  # B: independent permutations of its own size.


@pytest.mark.parametrize("mode,shape", [
    ("resize_and_crop", (32, 32, 3)), ("crop", (32, 32, 3)), ("scale_width", (48, 36, 3)),
    ("scale_width_and_crop", (32, 32, 3)), ("none", (60, 44, 3))])
def test_preprocess_mode_shapes(tmp_path, mode, shape):
  config = tiny_config(tmp_path, preprocess=mode)
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (61, 45, 3), dtype=np.uint8))
  out = input_pipeline.preprocess_train(image, config, tf.constant([1, 2]))
  assert tuple(out.shape) == shape


def test_scale_width_keeps_the_short_side_at_least_crop_size(tmp_path):
  config = tiny_config(tmp_path, preprocess="scale_width", load_size=256, crop_size=128)
  image = tf.zeros([100, 400, 3], tf.uint8)  # The aspect ratio alone would give 64 x 256.
  assert input_pipeline.preprocess_train(image, config, tf.constant([0, 0])).shape == (128, 256, 3)


# (mode, load_size, crop_size, photo height, width, size before the crop), with sizes where the
# reference's own would be multiples of 4, so no rounding of ours is involved.
REFERENCE_MODES = [
    ("resize_and_crop", 286, 256, 200, 256, (286, 286)),
    ("crop", 286, 128, 200, 256, (200, 256)),
    ("scale_width", 384, 256, 200, 256, (300, 384)),
    ("scale_width_and_crop", 384, 256, 200, 256, (300, 384)),
    ("none", 286, 256, 201, 257, (200, 256)),
]


@pytest.mark.parametrize("mode,load,crop,height,width,resized", REFERENCE_MODES)
def test_preprocess_equals_pil_doing_the_reference_transforms(tmp_path, mode, load, crop, height,
                                                             width, resized):
  """A photo against PIL (what the reference uses): bicubic resize, crop at the drawn
  corner, flip when the coin says so. Measured where there is a resize: mean 0.27-0.30
  levels, max 1.1 (PIL rounds to uint8, we keep floats); crops and flips alone are exact."""
  photo = Image.fromarray(synthetic.warm_scenes(1, 256, seed=3)[0]).resize((width, height),
                                                                          Image.BICUBIC)
  config = tiny_config(tmp_path, preprocess=mode, load_size=load, crop_size=crop)
  flips = set()
  for i in range(6):
    seed = tf.constant([7, i])
    ours = input_pipeline.preprocess_train(tf.constant(np.asarray(photo)), config, seed)
    top, left, flip = (int(v) for v in input_pipeline.augmentation(seed, *resized, config))
    want = photo if resized == (height, width) else photo.resize(resized[::-1], Image.BICUBIC)
    if "crop" in mode:
      want = want.crop((left, top, left + crop, top + crop))
    if flip:
      want = want.transpose(Image.FLIP_LEFT_RIGHT)
    flips.add(flip)
    levels = np.abs((ours.numpy() + 1) * 127.5 - np.asarray(want, np.float32))
    assert ours.shape == np.asarray(want).shape
    if resized == (height, width):
      assert levels.max() < 1e-3
    else:
      assert levels.mean() < 0.5 and levels.max() <= 3, (levels.mean(), levels.max())
  assert flips == {True, False}


def test_crop_corners_cover_every_position(tmp_path):
  config = tiny_config(tmp_path, preprocess="crop", crop_size=32)
  corners = {tuple(int(v) for v in input_pipeline.augmentation(tf.constant([0, i]), 36, 40,
                                                               config)[:2]) for i in range(400)}
  assert corners == {(t, l) for t in range(5) for l in range(9)}


def test_tfds_cycle_gan_builder_under_mock_data(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "reachable", lambda url, timeout=5.0: True)
  config = tiny_config(tmp_path, dataset="horse2zebra", tfds_data_dir=str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=3):
    domains = input_pipeline.load_domains(config, input_pipeline.SPLITS)
  assert sorted(domains) == sorted(input_pipeline.SPLITS)
  assert all(d.size == 3 for d in domains.values())
  batch = next(iter(input_pipeline.train_dataset(config, domains)))
  assert batch["a"].shape == (1, 32, 32, 3)


def test_tfds_offline_fails_fast_with_advice(tmp_path):
  started = time.monotonic()
  assert not input_pipeline.reachable("http://127.0.0.1:9/", timeout=2)  # discard port: closed
  with pytest.raises(input_pipeline.DataError, match="trainA/ trainB/"):
    with pytest.MonkeyPatch.context() as m:
      m.setattr(input_pipeline, "reachable", lambda url, timeout=5.0: False)
      input_pipeline.load_domains(
          tiny_config(tmp_path, dataset="monet2photo", tfds_data_dir=str(tmp_path / "tfds")))
  assert time.monotonic() - started < 10
  assert not list((tmp_path / "tfds").glob("**/*.tmp*"))


def test_synthetic_test_split_is_paired_by_the_true_mapping(tmp_path):
  from cyclegan import synthetic
  splits = synthetic.make_splits(size=16, n_train=4, n_test=3)
  np.testing.assert_array_equal(splits["testB"], synthetic.to_domain_b(splits["testA"]))
  assert not np.array_equal(splits["trainB"], synthetic.to_domain_b(splits["trainA"]))
  # The domains look different: A is warm (red high), B is cool (green high).
  assert splits["trainA"][..., 0].mean() > splits["trainA"][..., 2].mean() + 50
  assert splits["trainB"][..., 1].mean() > splits["trainB"][..., 0].mean() + 50


def test_real_images_including_greyscale(shared_data, tmp_path):
  config = tiny_config(tmp_path, dataset=str(shared_data / "horse2zebra"))
  domains = input_pipeline.load_domains(config)
  assert domains["trainA"].size == 1067 and domains["trainB"].size == 1334
  grey = [i for i in range(domains["trainB"].size)
          if len(Image.open(sorted(images.find_images(
              str(shared_data / "horse2zebra/trainB")))[i]).getbands()) == 1]
  assert len(grey) == 7
  assert domains["trainB"].load(tf.constant(grey[0])).shape == (256, 256, 3)


def test_training_reads_phone_photos_upright(tmp_path):
  (tmp_path / "data" / "trainA").mkdir(parents=True)
  (tmp_path / "data" / "trainB").mkdir()
  upright = {o: oriented_jpeg(tmp_path / "data" / "trainA" / f"o{o}.jpg", o) for o in (3, 6)}
  oriented_jpeg(tmp_path / "data" / "trainB" / "b.jpg", 6)
  domain = input_pipeline.load_domains(tiny_config(tmp_path, dataset=str(tmp_path / "data")))["trainA"]
  for i, orientation in enumerate((3, 6)):  # Files are sorted: o3.jpg, o6.jpg.
    got = domain.load(tf.constant(i)).numpy()
    assert got.shape == (180, 256, 3)
    assert np.abs(got.astype(int) - upright[orientation]).mean() < 2.5  # Turned wrong: ~60.


@pytest.mark.parametrize("jitter_in_decay,preprocess", [
    (False, "resize_and_crop"), (True, "resize_and_crop"), (False, "scale_width_and_crop")])
def test_cut_loader_stops_the_crop_jitter_in_the_decay_epochs(tmp_path, jitter_in_decay,
                                                              preprocess):
  """CUT's authors load at crop_size once the decay starts: then each image is the whole image
  resized to the crop, as in evaluation (flips off here to compare exactly)."""
  config = tiny_config(tmp_path, flip=False, epochs=1, epochs_decay=1,
                       jitter_in_decay=jitter_in_decay, preprocess=preprocess)
  domains = input_pipeline.load_domains(config)
  size = domains["trainA"].size
  whole = [input_pipeline.preprocess_eval(domains["trainA"].load(i), config).numpy()
           for i in range(size)]
  stream = [b["a"][0] for b in input_pipeline.train_dataset(config, domains).take(2 * size)
            .as_numpy_iterator()]
  resized = [any(np.abs(image - w).max() < 1e-5 for w in whole) for image in stream]
  assert not any(resized[:size])  # the first epoch crops at random
  assert all(resized[size:]) != jitter_in_decay
