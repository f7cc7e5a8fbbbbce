"""Exports: layout, any size, one copy of the weights, and loaders we did not write."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan import export
from cyclegan import train_lib
from conftest import REPO, oriented_jpeg, photo, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained for two steps and exported."""
  tmp = tmp_path_factory.mktemp("export")
  config = tiny_config(tmp, max_steps=2, export=True)
  paths = export.export_from_workdir(train_lib.train(config), config.export_dir)
  generators, _ = export.restore_generators(config.workdir)
  return config, paths, generators


def _run(args, **kwargs):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                        **kwargs)


def _reflect_np(image, height, width):
  """What the export must do, written with numpy: reflect-pad to multiples of 4 (>= 8), centred."""
  pads = []
  for n in (height, width):
    target = max(-(-n // 4) * 4, 8)
    pads.append(((target - n) // 2, target - n - (target - n) // 2))
  return np.pad(image, ((0, 0), *pads, (0, 0)), mode="reflect"), pads


def test_layout_and_versions(trained, tmp_path):
  config, paths, _ = trained
  assert paths == {"a2b": os.path.join(config.export_dir, "a2b", "1"),
                   "b2a": os.path.join(config.export_dir, "b2a", "1")}
  for path in paths.values():
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
  again = export.export_from_workdir(config.workdir, str(tmp_path / "e"))
  assert again["a2b"].endswith(os.path.join("a2b", "1"))
  assert export.export_from_workdir(config.workdir, str(tmp_path / "e"))["a2b"].endswith("2")
  assert not [d for d in os.listdir(tmp_path / "e" / "a2b") if d.startswith(".tmp")]


@pytest.mark.parametrize("height,width", [(70, 50), (64, 48), (1, 1), (3, 5), (9, 257)])
def test_any_size_equals_the_generator_on_the_reflect_padded_image(trained, height, width):
  config, paths, generators = trained
  loaded = tf.saved_model.load(paths["a2b"])
  x = np.random.default_rng(height).uniform(-1, 1, (1, height, width, 3)).astype(np.float32)
  got = loaded.signatures["translate_float"](images=tf.constant(x))["images"].numpy()
  padded, ((top, _), (left, _)) = _reflect_np(x, height, width)
  want = generators["generator_a2b"](padded).numpy()[:, top:top + height, left:left + width]
  assert got.shape == x.shape
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bytes_signature_returns_png_equal_to_uint8_signature(trained):
  _, paths, _ = trained
  loaded = tf.saved_model.load(paths["b2a"])
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 41), (8, 9))]
  encoded = []
  for i, image in enumerate(images):
    buf = io.BytesIO()
    Image.fromarray(image).convert("L" if i else "RGB").save(buf, "PNG" if i else "BMP")
    encoded.append(buf.getvalue())
  out = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
  assert sorted(out) == ["translated_bytes", "translated_size"]
  np.testing.assert_array_equal(out["translated_size"].numpy(), [[30, 41], [8, 9]])
  first = np.asarray(Image.open(io.BytesIO(out["translated_bytes"].numpy()[0])))
  want = loaded.signatures["translate_uint8"](images=tf.constant(images[0][None]))["images"]
  np.testing.assert_array_equal(first, want.numpy()[0])


def test_fresh_process_and_saved_model_cli(trained, tmp_path):
  config, paths, generators = trained
  x = np.random.default_rng(3).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
  np.save(tmp_path / "x.npy", x)
  np.save(tmp_path / "bytes.npy", np.array([_png(x[0])], dtype=object), allow_pickle=True)
  script = ("import sys, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
            "x = np.load(sys.argv[2]); "
            "np.save(sys.argv[3], m.signatures['translate_uint8'](images=tf.constant(x))['images'])")
  done = _run([sys.executable, "-c", script, paths["a2b"], str(tmp_path / "x.npy"),
               str(tmp_path / "fresh.npy")])
  assert done.returncode == 0, done.stderr[-2000:]
  fresh = np.load(tmp_path / "fresh.npy")
  padded, ((top, _), (left, _)) = _reflect_np(x.astype(np.float32) / 127.5 - 1, 50, 70)
  want = generators["generator_a2b"](padded).numpy()[:, top:top + 50, left:left + 70]
  assert np.abs(fresh.astype(np.float32) - (want + 1) * 127.5).max() <= 1.0  # uint8 rounding

  cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir",
         paths["a2b"], "--tag_set", "serve", "--outdir", str(tmp_path / "cli"), "--overwrite"]
  done = _run(cli + ["--signature_def", "translate_uint8", "--inputs", f"images={tmp_path}/x.npy"])
  assert done.returncode == 0, done.stderr[-2000:]
  np.testing.assert_array_equal(np.load(tmp_path / "cli" / "images.npy"), fresh)
  done = _run(cli + ["--signature_def", "serving_default",
                     "--inputs", f"image_bytes={tmp_path}/bytes.npy"])
  assert done.returncode == 0, done.stderr[-2000:]
  png = np.load(tmp_path / "cli" / "translated_bytes.npy", allow_pickle=True)[0]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), fresh[0])


def test_export_command_writes_the_next_version(trained):
  config, _, _ = trained
  done = _run([sys.executable, "-m", "cyclegan.export", "--workdir", config.workdir,
               "--export_dir", config.export_dir])
  assert done.returncode == 0, done.stderr[-2000:]
  assert os.path.isfile(os.path.join(config.export_dir, "a2b", "2", "saved_model.pb"))
  assert "saved_model_cli show" in done.stdout
  missing = _run([sys.executable, "-m", "cyclegan.export", "--workdir", "/nonexistent"])
  assert missing.returncode != 0 and "Traceback" not in missing.stderr
  assert "error:" in missing.stderr


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "PNG")
  return buf.getvalue()


def test_full_size_export_stores_each_weight_once(full_size_export):
  path = full_size_export
  size = sum(os.path.getsize(os.path.join(path, "variables", f))
             for f in os.listdir(os.path.join(path, "variables")))
  params_bytes = 11_378_179 * 4
  assert params_bytes <= size < params_bytes * 1.02
  loaded = tf.saved_model.load(path)
  out = loaded.signatures["translate_uint8"](images=tf.zeros([1, 256, 256, 3], tf.uint8))
  assert out["images"].shape == (1, 256, 256, 3)


def test_bf16_signature_is_within_a_few_levels_of_fp32_on_photos(full_size_export):
  """The full-size generator (reference init) on 8 photos (conftest.photo, 256x256): measured
  mean 1.99 levels, p99 8, max 23 (of 255) between translate_uint8_bf16 and translate_uint8
  (on 8 real horse2zebra/monet2photo photos: 1.48, 6, 25)."""
  photos = tf.constant(np.stack([photo(256, 256, seed) for seed in range(8)]))
  loaded = tf.saved_model.load(full_size_export)
  fp32 = loaded.signatures["translate_uint8"](images=photos)["images"].numpy().astype(int)
  bf16 = loaded.signatures["translate_uint8_bf16"](images=photos)["images"].numpy().astype(int)
  levels = np.abs(fp32 - bf16)
  assert 0.1 < levels.mean() <= 2.5 and np.percentile(levels, 99) <= 10, (
      levels.mean(), np.percentile(levels, 99), levels.max())


@pytest.mark.parametrize("orientation", [3, 6])
def test_bytes_signature_turns_phone_photos_upright(trained, tmp_path, orientation):
  """In the graph, so TF Serving and saved_model_cli agree with cyclegan.translate."""
  _, paths, _ = trained
  upright = oriented_jpeg(tmp_path / "photo.jpg", orientation)
  loaded = tf.saved_model.load(paths["a2b"])
  out = loaded.signatures["serving_default"](
      image_bytes=tf.constant([(tmp_path / "photo.jpg").read_bytes()]))
  np.testing.assert_array_equal(out["translated_size"].numpy(), [[180, 256]])
  got = np.asarray(Image.open(io.BytesIO(out["translated_bytes"].numpy()[0]))).astype(int)
  want = loaded.signatures["translate_uint8"](images=tf.constant(upright[None]))["images"]
  assert np.abs(got - want.numpy()[0]).mean() < 3  # TF's JPEG decoder vs Pillow's.


def test_best_falls_back_to_the_latest_without_evaluations_and_says_so(trained, tmp_path):
  """The fixture's run evaluated nothing (eval_every 0): best means the latest, and
  metrics.json says which it is."""
  config, _, _ = trained
  paths = export.export_from_workdir(config.workdir, str(tmp_path / "e"), which="best")
  record = json.load(open(os.path.join(paths["b2a"], "metrics.json")))
  assert record["checkpoint"] == "latest" and record["step"] == 2
  assert record["is_best"] is False and record["metrics"] == {} and record["direction"] == "b2a"


def test_an_unreadable_best_checkpoint_is_one_line(tmp_path):
  config = tiny_config(tmp_path, max_steps=2, eval_every=2)
  train_lib.train(config)
  data = glob.glob(os.path.join(config.workdir, "best", "step-2", "ckpt-2.data-*"))[0]
  os.truncate(data, os.path.getsize(data) // 2)  # a hard link: the rotation's copy too
  with pytest.raises(ValueError, match=r"checkpoint \S+step-2/ckpt-2 \(the best by held-out psnr"
                     r" \(.*\)\) is unreadable \(.+\): export another with --checkpoint latest"):
    export.export_from_workdir(config.workdir, str(tmp_path / "e"), which="best")
