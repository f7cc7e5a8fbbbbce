"""`python -m cyclegan.translate` on a folder of awkward and broken files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan import cli
from cyclegan import export
from cyclegan import models
from cyclegan import runtime
from cyclegan import synthetic
from cyclegan import translate
from conftest import REPO, oriented_jpeg

RNG = np.random.default_rng(0)


def _rgb(height, width):
  return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  base = tmp_path_factory.mktemp("model") / "a2b"
  export.save(models.resnet_generator(ngf=4, n_blocks=1), str(base))
  return str(base)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
  """{relative path: expected (height, width)} for readable files; broken ones listed apart."""
  root = tmp_path_factory.mktemp("inputs")
  sizes = {}

  def save(relative, image, **kwargs):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    sizes[relative] = (image.height, image.width)

  save("tiny/one.png", Image.fromarray(_rgb(1, 1)))
  save("tiny/three_by_five.bmp", Image.fromarray(_rgb(3, 5)))
  save("odd/255x257.JPG", Image.fromarray(_rgb(255, 257)))
  save("modes/grey.png", Image.fromarray(_rgb(20, 30)).convert("L"))
  save("modes/grey_alpha.png", Image.fromarray(_rgb(20, 30)).convert("LA"))
  save("modes/rgba.png", Image.fromarray(np.dstack([_rgb(21, 13), RNG.integers(0, 256, (21, 13), dtype=np.uint8)]), "RGBA"))
  save("modes/palette.gif", Image.fromarray(_rgb(17, 19)).convert("P"))
  save("modes/cmyk.jpg", Image.fromarray(_rgb(16, 24)).convert("CMYK"))
  save("modes/cmyk.tif", Image.fromarray(_rgb(16, 24)).convert("CMYK"))
  save("modes/sixteen_bit.png", Image.fromarray((RNG.integers(0, 65535, (12, 18))).astype(np.uint16)))
  save("modes/bilevel.png", Image.fromarray(_rgb(10, 10)).convert("1"))
  save("formats/photo.webp", Image.fromarray(_rgb(40, 24)))
  save("formats/photo.tiff", Image.fromarray(_rgb(24, 40)))
  frames = [Image.fromarray(_rgb(15, 25)).convert("P") for _ in range(3)]
  frames[0].save(root / "formats/animated.gif", save_all=True, append_images=frames[1:])
  sizes["formats/animated.gif"] = (15, 25)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise when displayed.
  save("exif/rotated.jpg", Image.fromarray(_rgb(30, 50)), exif=exif)
  sizes["exif/rotated.jpg"] = (50, 30)
  save("ünïcödé/名前 with space.png", Image.fromarray(_rgb(8, 12)))
  save("same_size/a.png", Image.fromarray(_rgb(32, 32)))
  save("same_size/b.png", Image.fromarray(_rgb(32, 32)))
  save("same_size/c.png", Image.fromarray(_rgb(32, 32)))

  broken = ["broken/empty.jpg", "broken/text.jpg", "broken/truncated.png"]
  (root / "broken").mkdir()
  (root / "broken/empty.jpg").write_bytes(b"")
  (root / "broken/text.jpg").write_text("this is not an image")
  good = root / "same_size/a.png"
  (root / "broken/truncated.png").write_bytes(good.read_bytes()[:200])
  (root / "notes.txt").write_text("ignored")
  (root / ".hidden.png").write_bytes(good.read_bytes())
  (root / ".hidden_dir").mkdir()
  (root / ".hidden_dir/x.png").write_bytes(good.read_bytes())
  return root, sizes, broken


def _translate(*args):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.run([sys.executable, "-m", "cyclegan.translate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_folder_run_sizes_failures_and_resume(model_dir, awkward, tmp_path):
  root, sizes, broken = awkward
  out = tmp_path / "out"
  done = _translate("--model", model_dir, "--input", str(root), "--output", str(out))
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  assert f"translated {len(sizes)} of {len(sizes) + len(broken)}" in done.stdout
  for name in broken:
    assert name in done.stdout
  written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  outputs = {r: os.path.splitext(r)[0] + (".jpg" if r.lower().endswith(".jpg") else ".png")
             for r in sizes}
  # Same stem, two formats: each keeps its extension in the output name.
  outputs["formats/photo.webp"] = "formats/photo.webp.png"
  outputs["formats/photo.tiff"] = "formats/photo.tiff.png"
  outputs["formats/animated.gif"] = "formats/animated.gif"  # an animation: a video (video.py)
  assert written == sorted(outputs.values())
  for relative, (height, width) in sizes.items():
    with Image.open(out / outputs[relative]) as image:
      assert (image.height, image.width) == (height, width), relative
  with Image.open(out / "modes/rgba.png") as image:  # Alpha survives unchanged.
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image)[..., 3],
                                  np.asarray(Image.open(root / "modes/rgba.png"))[..., 3])

  before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
  again = _translate("--model", model_dir, "--input", str(root), "--output", str(out))
  assert f"{len(sizes)} outputs exist already" in again.stdout
  assert again.returncode == 1  # The broken files still fail.
  assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_single_file_format_and_exit_codes(model_dir, awkward, tmp_path):
  root, _, _ = awkward
  done = _translate("--model", os.path.join(model_dir, "1"), "--input",
                    str(root / "odd/255x257.JPG"), "--output", str(tmp_path), "--format", "webp")
  assert done.returncode == 0, done.stderr[-3000:]
  with Image.open(tmp_path / "255x257.webp") as image:
    assert image.size == (257, 255)
  usage = [
      ["--model", "/nowhere", "--input", str(root), "--output", str(tmp_path / "x")],
      ["--model", model_dir, "--input", "/nowhere", "--output", str(tmp_path / "x")],
      ["--model", model_dir, "--input", str(root), "--output", str(root / "inside")],
      ["--model", model_dir, "--input", str(root)],
      ["--model", model_dir, "--input", str(root), "--output", str(tmp_path), "--batch_size", "0"],
  ]
  for args in usage:
    done = _translate(*args)
    assert done.returncode == 2, (args, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "error" in done.stderr.lower()
  assert not (root / "inside").exists()


def test_batching_gives_the_same_pixels_as_one_by_one(model_dir):
  translator = translate.TiledModel(translate.resolve_model(model_dir), "fp32", 0, 0, 0)
  batch = np.stack([_rgb(24, 20) for _ in range(3)])
  together = translator(batch)
  alone = np.concatenate([translator(batch[i:i + 1]) for i in range(3)])
  np.testing.assert_array_equal(together, alone)


def test_max_side_resizes_around_the_model(model_dir):
  translator = translate.TiledModel(translate.resolve_model(model_dir), "fp32", 0, 0, 40)
  assert translator.model_size((100, 60, 3)) == (40, 24)
  assert translator(_rgb(100, 60)[None]).shape == (1, 100, 60, 3)


def test_tiling_an_odd_sized_image_keeps_its_size(model_dir):
  translator = translate.TiledModel(translate.resolve_model(model_dir), "fp32", 64, 16, 0)
  image = _rgb(101, 150)
  assert translator.tiled(image.shape)
  assert translator(image[None]).shape == (1, 101, 150, 3)


@pytest.mark.parametrize("orientation", [3, 6])
def test_phone_photo_translates_as_its_upright_pixels(model_dir, tmp_path, orientation):
  inputs = tmp_path / "in"
  inputs.mkdir()
  upright = oriented_jpeg(inputs / "phone.jpg", orientation)
  Image.fromarray(upright).save(inputs / "upright.png")
  done = _translate("--model", model_dir, "--input", str(inputs), "--output",
                    str(tmp_path / "out"), "--format", "png")
  assert done.returncode == 0, done.stderr[-2000:]
  phone = np.asarray(Image.open(tmp_path / "out" / "phone.png"))
  assert phone.shape == (180, 256, 3)
  np.testing.assert_array_equal(phone, np.asarray(Image.open(tmp_path / "out" / "upright.png")))


def _peak_rss_run(*args):
  """The command in a subprocess that reports its own peak RSS (bytes) on stderr at exit:
  VmHWM, as getrusage's ru_maxrss keeps the parent's (pytest's) peak across exec on Linux."""
  code = ("import atexit, runpy, sys; atexit.register(lambda: print('PEAK_KB', [line.split()[1] "
          "for line in open('/proc/self/status') if line.startswith('VmHWM')][0], "
          "file=sys.stderr)); "
          "sys.argv = ['translate'] + sys.argv[1:]; "
          "runpy.run_module('cyclegan.translate', run_name='__main__')")
  done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr[-3000:]
  return int(done.stderr.split("PEAK_KB")[-1].split()[0]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
def test_a_large_image_stays_within_the_memory_budget(tmp_path):
  """A 3000x2000 photo through an ngf-16 generator: whole (--tile 0) the process peaks at
  2.41 GB (measured); with --memory_budget 1.2 it is tiled and peaks at 0.95 GB."""
  base = tmp_path / "model" / "a2b"
  export.save(models.resnet_generator(ngf=16, n_blocks=2), str(base))
  scene = synthetic.warm_scenes(1, 500, seed=1)[0]
  (tmp_path / "in").mkdir()
  Image.fromarray(scene).resize((3000, 2000), Image.BICUBIC).save(tmp_path / "in" / "big.jpg")
  common = ["--model", str(base), "--input", str(tmp_path / "in"), "--precision", "fp32"]
  budget = 1.2e9
  tiled = _peak_rss_run(*common, "--output", str(tmp_path / "tiled"), "--memory_budget", "1.2")
  whole = _peak_rss_run(*common, "--output", str(tmp_path / "whole"), "--tile", "0")
  print(f"peak RSS: tiled {tiled / 1e9:.2f} GB, whole {whole / 1e9:.2f} GB")
  assert tiled <= budget < whole
  with Image.open(tmp_path / "tiled" / "big.jpg") as image:
    assert image.size == (3000, 2000)


def test_a_cpu_runs_large_images_one_per_call_and_small_ones_together(model_dir, monkeypatch):
  """A batch of 512 px images costs more per image than single calls on a CPU; small images
  gain from the batch (TiledModel._run)."""
  monkeypatch.setattr(translate, "CPU_SINGLE_CALL_PIXELS", 24 * 20)
  translator = translate.TiledModel(translate.resolve_model(model_dir), "fp32", 0, 0, 0)
  signature, calls = translator._signature, []
  translator._signature = lambda images: calls.append(len(images)) or signature(images=images)
  large, small = (np.stack([_rgb(h, w) for _ in range(3)]) for h, w in ((24, 20), (20, 20)))
  assert translator(large).shape == large.shape and translator(small).shape == small.shape
  assert calls == ([3, 3] if tf.config.list_physical_devices("GPU") else [1, 1, 1, 3])


def test_the_folder_benchmark_reports_what_the_speed_table_reads(tmp_path):
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--what", "folder", "--size",
       "32", "--images", "6", "--ngf", "4", "--n_blocks", "1", "--precision", "fp32"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.splitlines()[-1])
  assert result["precision"] == "fp32" and result["steps"] == 2
  assert 0 < result["median_s"] < result["first_step_s"] and result["peak_rss_gb"] > 0


@pytest.mark.parametrize("gpu,cpu_bf16,want", [
    (None, True, "bf16"), (None, False, "fp32"), ((8, 0), False, "bf16"), ((7, 5), True, "fp32")])
def test_precision_auto_is_bf16_where_the_machine_runs_it_natively(monkeypatch, caplog, gpu,
                                                                   cpu_bf16, want):
  monkeypatch.setattr(runtime, "gpu_capability", lambda: gpu)
  monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: cpu_bf16)
  with caplog.at_level("INFO", logger="absl"):
    assert runtime.inference_precision("auto", export.UINT8_SIGNATURES.values()) == want
  assert [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()] == [
      f"precision auto: {want} ({runtime.auto_inference_precision()[1]})"]
  assert runtime.inference_precision("fp32", export.UINT8_SIGNATURES.values()) == "fp32"


def test_an_export_without_bf16_runs_fp32_under_auto_and_refuses_explicit_bf16(
    monkeypatch, caplog, tmp_path):
  """As exports from before the bf16 signature: auto falls back with one warning line."""
  module = export.ServingModule(models.resnet_generator(ngf=4, n_blocks=1))
  signatures = module.signatures()
  del signatures[export.UINT8_SIGNATURES["bf16"]]
  tf.saved_model.save(module, str(tmp_path / "old"), signatures=signatures)
  monkeypatch.setattr(runtime, "gpu_capability", lambda: None)
  monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
  with caplog.at_level("INFO", logger="absl"):
    translator = translate.TiledModel(str(tmp_path / "old"), "auto", 0, 0, 0)
  assert [r.levelname for r in caplog.records if "precision auto" in r.getMessage()] == [
      "WARNING"]
  assert translator(_rgb(12, 16)[None]).shape == (1, 12, 16, 3)
  with pytest.raises(cli.UserError, match="has no translate_uint8_bf16 signature"):
    translate.TiledModel(str(tmp_path / "old"), "bf16", 0, 0, 0)


def _ops(function):
  graph = function.graph.as_graph_def()
  return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def test_cpu_kernels_off_runs_the_weights_traced_again_with_plain_ops(model_dir, tmp_path):
  """off re-traces the export without the routes: its reflect padding is tf.pad's MirrorPad,
  where the saved graph gathers (kernels.reflect_pad); the pixels agree within rounding."""
  path = translate.resolve_model(model_dir)
  saved = translate.TiledModel(path, "fp32", 0, 0, 0)
  off = translate.TiledModel(path, "fp32", 0, 0, 0, cpu_kernels="off")
  assert "MirrorPad" in _ops(off._signature) and "MirrorPad" not in _ops(saved._signature)
  image = _rgb(40, 56)
  (tmp_path / "in").mkdir()
  Image.fromarray(image).save(tmp_path / "in" / "x.png")
  done = _translate("--model", model_dir, "--input", str(tmp_path / "in"), "--output",
                    str(tmp_path / "out"), "--precision", "fp32", "--cpu_kernels", "off")
  assert done.returncode == 0, done.stderr[-2000:]
  got = np.asarray(Image.open(tmp_path / "out" / "x.png")).astype(int)
  assert np.abs(got - saved(image[None])[0]).max() <= 2
