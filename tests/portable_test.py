"""TFLite and ONNX files, run in LiteRT's interpreter and ONNX Runtime as an app would."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cyclegan import cli
from cyclegan import export
from cyclegan import portable
from cyclegan import train_lib
from conftest import REPO, photo, tiny_config

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="the [export] extra")
onnxruntime = pytest.importorskip("onnxruntime", reason="the [export] extra")


def run_tflite(path, image):
  """LiteRT's interpreter by hand: resize the input to the image, allocate, invoke."""
  interpreter = litert.Interpreter(model_path=path)
  index = interpreter.get_input_details()[0]["index"]
  interpreter.resize_tensor_input(index, image.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(index, image)
  interpreter.invoke()
  output = interpreter.get_output_details()[0]
  assert output["dtype"] == np.uint8
  return interpreter.get_tensor(output["index"])


def run_onnx(path, image):
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  (inp,), (out,) = session.get_inputs(), session.get_outputs()
  assert inp.type == out.type == "tensor(uint8)" and inp.shape[0] == 1 and inp.shape[3] == 3
  assert all(isinstance(d, str) for d in inp.shape[1:3]), inp.shape  # dynamic H and W
  return session.run(None, {inp.name: image})[0]


RUNTIMES = {"tflite": run_tflite, "tflite_fp16": run_tflite, "tflite_int8": run_tflite,
            "onnx": run_onnx}


# Two photos at 256x256 and one at an odd size (157x203), uint8 [1, H, W, 3].
PHOTOS = [photo(h, w, seed)[None] for seed, (h, w) in enumerate([(256, 256)] * 2 + [(157, 203)])]


def export_command(*args):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.run([sys.executable, "-m", "cyclegan.export", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def checks(model_base, formats, photos, size=None):
  """{format: [portable.Check per photo]} of each file against the SavedModel."""
  reference = tf.saved_model.load(export.resolve_version(model_base)[0]).signatures[
      "translate_uint8"]
  found = {}
  for fmt in formats:
    path = portable.file_path(model_base, fmt, size)
    found[fmt] = []
    for photo in photos:
      want = reference(images=tf.constant(photo))["images"].numpy()
      got = RUNTIMES[fmt](path, photo)
      assert got.shape == photo.shape and got.dtype == np.uint8
      found[fmt].append(portable.compare(want, got))
  return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """(workdir, a2b export) of a tiny model trained for two steps."""
  tmp = tmp_path_factory.mktemp("portable")
  workdir = train_lib.train(tiny_config(tmp, max_steps=2))
  return workdir, export.export_from_workdir(workdir, str(tmp / "e"))["a2b"]


@pytest.fixture(scope="module")
def tiny_export(tiny_run):
  return tiny_run[1]


def test_every_format_matches_the_savedmodel_in_its_runtime(tiny_export):
  """Tiny model after two steps: measured fp32 and ONNX max 1, fp16 max 1 (mean 0.013 levels),
  int8 47.7-48.4 dB."""
  base = os.path.dirname(tiny_export)
  done = export_command("--model", base, "--formats")  # bare: all formats
  assert done.returncode == 0, done.stderr[-3000:]
  for fmt in portable.SUFFIXES:
    assert portable.file_path(base, fmt) in done.stdout
  assert not [f for f in os.listdir(os.path.dirname(base)) if f.startswith(".tmp")]
  assert sorted(os.listdir(base)) == ["1"]  # TF Serving's layout untouched
  found = checks(base, portable.SUFFIXES, PHOTOS)
  for fmt in ("tflite", "onnx"):
    assert max(c.max_diff for c in found[fmt]) <= 1, found[fmt]
  assert max(c.max_diff for c in found["tflite_fp16"]) <= 3, found["tflite_fp16"]
  assert min(c.psnr for c in found["tflite_int8"]) >= 30, found["tflite_int8"]


def test_cut_exports_convert_and_match(tiny_cut_export):
  """CUT's blur layers (reflect-padded depthwise blur, bilinear upsampling) in LiteRT and ONNX
  Runtime; converted in-process, as the command does."""
  base = os.path.dirname(tiny_cut_export)
  export.write_formats(tiny_cut_export, ["tflite", "onnx"], None)
  found = checks(base, ["tflite", "onnx"], PHOTOS)
  for fmt in ("tflite", "onnx"):
    assert max(c.max_diff for c in found[fmt]) <= 1, found[fmt]


def test_full_size_generator(full_size_export):
  """ngf 64, 9 blocks at its random init, the worst case for int8 (measured 28.6-31.2 dB, mean
  30.0; after 300 training steps 38.5-40.1 dB, docs/performance.md). fp32 files: measured max 1."""
  base = os.path.dirname(full_size_export)
  done = export_command("--model", full_size_export, "--formats", "tflite,tflite_int8,onnx")
  assert done.returncode == 0, done.stderr[-3000:]
  found = checks(base, ["tflite", "tflite_int8", "onnx"], PHOTOS)
  for fmt in ("tflite", "onnx"):
    assert max(c.max_diff for c in found[fmt]) <= 1, found[fmt]
  psnrs = [c.psnr for c in found["tflite_int8"]]
  assert min(psnrs) >= 27 and np.mean(psnrs) >= 28.5, found["tflite_int8"]


def test_file_names_sit_beside_the_base_folder():
  names = {f: portable.file_path("saved_models/x/a2b/", f, (40, 56)) for f in portable.SUFFIXES}
  assert names == {"tflite": "saved_models/x/a2b_fp32_40x56.tflite",
                   "tflite_fp16": "saved_models/x/a2b_fp16_40x56.tflite",
                   "tflite_int8": "saved_models/x/a2b_int8_40x56.tflite",
                   "onnx": "saved_models/x/a2b_40x56.onnx"}
  assert portable.file_path("saved_models/x/a2b", "onnx") == "saved_models/x/a2b.onnx"
  assert export.model_base("saved_models/x/a2b/3") == "saved_models/x/a2b"
  assert export.model_base("my_model") == "my_model"


def test_fixed_size_is_in_the_name_and_the_input(tiny_export):
  base = os.path.dirname(tiny_export)
  done = export_command("--model", tiny_export, "--formats", "tflite", "--size", "40,56")
  assert done.returncode == 0, done.stderr[-3000:]
  path = portable.file_path(base, "tflite", (40, 56))
  assert path.endswith("a2b_fp32_40x56.tflite")
  interpreter = litert.Interpreter(model_path=path)
  detail = interpreter.get_input_details()[0]
  assert list(detail["shape_signature"]) == [1, 40, 56, 3]


@pytest.mark.parametrize("args,message", [
    (["--formats", "tflite,bogus"], "unknown bogus"),
    (["--size", "5", "--formats", "tflite"], "at least 8"),
])
def test_bad_flags_are_one_line(tiny_export, args, message):
  done = export_command("--model", tiny_export, *args)
  assert done.returncode == cli.USAGE and message in done.stderr, done.stderr[-2000:]
  assert "Traceback" not in done.stderr


def test_size_without_formats_is_one_line(tiny_run):
  done = export_command("--workdir", tiny_run[0], "--size", "64")
  assert done.returncode == cli.USAGE and "give --formats too" in done.stderr, done.stderr[-2000:]


def test_a_missing_extra_names_what_to_install(monkeypatch):
  real = portable.importlib.util.find_spec
  monkeypatch.setattr(portable.importlib.util, "find_spec",
                      lambda name: None if name == "tf2onnx" else real(name))
  portable.check_installed(["tflite"])
  with pytest.raises(cli.UserError, match=r"needs tf2onnx: pip install 'cyclegan\[export\]'"):
    portable.check_installed(["tflite", "onnx"])


def test_an_older_export_gets_todays_graph(tiny_export):
  """The converters rebuild the generator from the stored variables, not the stored graph."""
  loaded = tf.saved_model.load(tiny_export)
  generator = export.generator_of(loaded)
  x = np.random.default_rng(0).integers(0, 256, (1, 37, 50, 3), np.uint8)
  # Traced as the export traces it, for any batch and size: traced for this one image, the
  # instance norms take their batch-of-one form, equal only to rounding (1 level at x.5).
  retraced = export.ServingModule(generator).signatures()["translate_uint8"]
  np.testing.assert_array_equal(
      loaded.signatures["translate_uint8"](images=tf.constant(x))["images"].numpy(),
      retraced(images=tf.constant(x))["images"].numpy())
  with pytest.raises(ValueError, match="not a cyclegan export"):
    export.generator_of(tf.Module())
