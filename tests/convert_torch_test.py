"""Importing PyTorch generator checkpoints: parity with PyTorch, and clear refusals."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from conftest import REPO, load_tool, photo, tiny_config

torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")

from cyclegan import convert_torch  # noqa: E402
from cyclegan import export  # noqa: E402
from cyclegan import train_lib  # noqa: E402
from cyclegan.config import ConfigError  # noqa: E402

torch_reference = load_tool("torch_reference")


def _state_dict(ngf=64, n_blocks=9, use_dropout=False, seed=0, antialias=False):
  """A reference-layout generator with PyTorch's default random init, keyed model.N...;
  antialias: CUT's generator, in its authors' layout."""
  torch.manual_seed(seed)
  net = torch_reference.resnet_generator(ngf, n_blocks, use_dropout, antialias).eval()
  return net, {f"model.{k}": v for k, v in net.state_dict().items()}


def _save(tmp_path, state, name="net_G.pth"):
  path = tmp_path / name
  torch.save(state, path)
  return str(path)


def _torch_translate(net, x):
  """PyTorch on the same centred reflect padding our export uses, then cropped back."""
  _, height, width, _ = x.shape
  pads = []
  for n in (width, height):
    target = max(-(-n // 4) * 4, 8)
    pads += [(target - n) // 2, target - n - (target - n) // 2]
  with torch.no_grad():
    t = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2), pads, mode="reflect")
    out = net(t).permute(0, 2, 3, 1).numpy()
  return out[:, pads[2]:pads[2] + height, pads[0]:pads[0] + width]


@pytest.mark.parametrize("height,width", [(200, 300), (201, 302)])
def test_converted_savedmodel_matches_pytorch_on_a_photo(tmp_path, height, width):
  net, state = _state_dict()
  path = convert_torch.convert(_save(tmp_path, state), str(tmp_path / "export"))
  x = photo(height, width).astype(np.float32)[None] / 127.5 - 1
  got = tf.saved_model.load(path).signatures["translate_float"](images=tf.constant(x))["images"]
  want = _torch_translate(net, x)
  assert got.shape == want.shape
  assert np.abs(got.numpy() - want).max() <= 1e-4


@pytest.fixture(scope="module")
def cut_conversion(tmp_path_factory):
  """(PyTorch net, loaded export) of a full-size CUT generator, converted once."""
  net, state = _state_dict(antialias=True)
  blurs = sorted(int(k.split(".")[1]) for k in state if k.endswith(".filt"))
  assert len(state) == 52 and blurs == [7, 11, 21, 25]  # the authors' layout, as the issue has it
  tmp = tmp_path_factory.mktemp("cut")
  return net, tf.saved_model.load(convert_torch.convert(_save(tmp, state), str(tmp / "export")))


def _real_photo(shared_data):
  with Image.open(sorted((shared_data / "horse2zebra" / "testA").glob("*.jpg"))[0]) as image:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("source", ["real photo", "odd size"])
def test_a_cut_generator_matches_pytorch_within_a_grey_level(cut_conversion, source, request):
  """Measured: max 1 level (float rounding at x.5), on a horse and on 201x302."""
  net, loaded = cut_conversion
  rgb = _real_photo(request.getfixturevalue("shared_data")) if source == "real photo" else \
      photo(201, 302, seed=3)
  got = loaded.signatures["translate_uint8"](images=tf.constant(rgb[None]))["images"].numpy()
  want = _torch_translate(net, rgb[None].astype(np.float32) / 127.5 - 1)
  want = np.clip(np.round((want + 1) * 127.5), 0, 255)
  assert got.shape == rgb[None].shape
  assert np.abs(got.astype(int) - want).max() <= 1
  assert want.std() > 10  # a picture, not a flat answer: the test can fail


def test_six_blocks_dropout_layout_and_stray_running_stats(tmp_path):
  net, state = _state_dict(ngf=8, n_blocks=6, use_dropout=True)
  assert "model.10.conv_block.6.weight" in state
  state["model.2.running_mean"] = torch.zeros(8)  # Old checkpoints carry these; ignored.
  state["model.2.running_var"] = torch.ones(8)
  generator = convert_torch.load_generator(_save(tmp_path, state))
  x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 40, 3)).astype(np.float32)
  np.testing.assert_allclose(generator(x).numpy(), _torch_translate(net, x), atol=1e-5)


def test_refuses_what_is_not_a_generator_state_dict(tmp_path):
  _, state = _state_dict(ngf=4, n_blocks=2)
  _, cut_state = _state_dict(ngf=4, n_blocks=5, antialias=True)
  cases = {
      "missing keys": {k: v for k, v in state.items() if "model.4." not in k},
      "unexpected keys": {**state, "model.99.weight": torch.zeros(1)},
      "does not fit": {**state, "model.4.weight": torch.zeros(8, 3, 3, 3)},
      "not CUT's binomial blur": {**cut_state, "model.11.filt": cut_state["model.11.filt"] * 2},
      "missing keys for a 5-block CUT generator": {
          k: v for k, v in cut_state.items() if k != "model.21.filt"},
      "discriminator": {"model.0.weight": torch.zeros(64, 3, 4, 4), "model.0.bias": torch.zeros(64)},
      "not a ResNet generator": {"fc.weight": torch.zeros(2, 2)},
      "not a state dict": [torch.zeros(1)],
  }
  for expected, bad in cases.items():
    with pytest.raises(convert_torch.ConversionError, match=expected):
      convert_torch.load_generator(_save(tmp_path, bad))
  (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(convert_torch.ConversionError, match="corrupt.pth: an incomplete zip"):
    convert_torch.load_generator(str(tmp_path / "corrupt.pth"))


def test_command_and_one_line_errors(tmp_path):
  _, state = _state_dict(ngf=4, n_blocks=2)
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  run = lambda *a: subprocess.run([sys.executable, "-m", "cyclegan.convert_torch", *a], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=300)
  done = run(_save(tmp_path, state), "--export_dir", str(tmp_path / "style"), "--formats",
             "tflite")
  assert done.returncode == 0, done.stderr[-2000:]
  assert (tmp_path / "style" / "1" / "saved_model.pb").is_file()
  assert (tmp_path / "style_fp32.tflite").is_file()  # beside the base folder, checked (stdout)
  assert "style_fp32.tflite" in done.stdout and "PSNR" in done.stdout
  bad = run(str(tmp_path / "missing.pth"), "--export_dir", str(tmp_path / "x"))
  assert bad.returncode == 2 and "Traceback" not in bad.stderr and "does not exist" in bad.stderr


def test_training_starts_from_pytorch_generators(tmp_path):
  """With lr 0 the weights stay as imported, so the export must equal PyTorch's output."""
  net, state = _state_dict(ngf=4, n_blocks=1)
  config = tiny_config(tmp_path, init_a2b=_save(tmp_path, state), lr=0.0, max_steps=1,
                       export=True)
  paths = export.export_from_workdir(train_lib.train(config), config.export_dir)
  x = np.random.default_rng(0).uniform(-1, 1, (1, 36, 44, 3)).astype(np.float32)
  got = tf.saved_model.load(paths["a2b"]).signatures["translate_float"](images=tf.constant(x))
  np.testing.assert_allclose(got["images"].numpy(), _torch_translate(net, x), atol=1e-5)
  with pytest.raises(ConfigError, match="ngf=4, n_blocks=1; this run builds ngf=8"):
    train_lib.train(tiny_config(tmp_path / "other", init_b2a=config.init_a2b, ngf=8, max_steps=1))
  _, cut_state = _state_dict(ngf=4, n_blocks=1, antialias=True)
  with pytest.raises(ConfigError, match="is a CUT generator"):
    train_lib.train(tiny_config(tmp_path / "cut", init_a2b=_save(tmp_path, cut_state, "G.pth"),
                                max_steps=1))
