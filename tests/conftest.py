"""Shared fixtures: two logical CPUs (for strategy tests), the tiny test model, and photos made
from the built-in scenes (tests run without ../shared/data)."""

import functools
import importlib.util
import os
import pathlib
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyTorch's CUDA build imports triton (its GPU compiler) lazily, from optimizers and
# torchvision; triton's LLVM loaded after TensorFlow's crashes the process (a segfault, triton
# 3.8, torch 2.14). The tests run PyTorch on CPU, which needs no triton.
sys.modules.setdefault("triton", None)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

# Must happen before TensorFlow initialises its devices, i.e. before any test runs an op.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from cyclegan import config as config_lib  # noqa: E402
from cyclegan import cut_models, export, models, synthetic, train_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


# The tiny test model and its data: one definition for in-process (tiny_config) and
# subprocess (tiny_flags) tests.
TINY = dict(load_size=36, crop_size=32, ngf=4, ndf=4, n_blocks=1, n_layers_d=2, synthetic_size=36,
            synthetic_train=8, synthetic_test=4, strategy="default", precision="fp32")


def tiny_config(tmp_path, **overrides):
  """A model small enough that a step takes milliseconds, on the built-in dataset."""
  values = dict(
      TINY, name="tiny", dataset="synthetic", pool_size=3, epochs=1, epochs_decay=1, log_every=1,
      image_every=2, checkpoint_every=2, eval_every=0,
      workdir=str(tmp_path / "workdir"), export_dir=str(tmp_path / "export"), export=False)
  values.update(overrides)
  return config_lib.make_config(values)


def run_steps(config, batches, strategy=None):
  """Train steps of `config` (on one device, or under `strategy`, which splits each global
  batch across its replicas), one per batch ({"a", "b"} arrays), from the config's seed:
  (each step's losses, the state after them)."""
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    state = train_lib.create_state(config, 8)
  step = train_lib.make_train_step(config, state, strategy)
  losses = []
  for batch in batches:
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    losses.append({k: float(v) for k, v in step(next(iter(dataset))).items()})
  return losses, state


def headless_chromium(tmp_path):
  """A selenium driver of Debian's headless Chromium (quit it when done); the test fails under
  CI, where .ci/run installs it, and skips elsewhere without it."""
  chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
  if not (chromium and driver):
    if os.environ.get("CI"):
      pytest.fail(".ci/run should have installed chromium and chromium-driver")
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
  from selenium import webdriver  # only the browser tests need selenium
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}"):
    options.add_argument(arg)
  return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def model_weights(state):
  """Every network weight of a train state, by network and path."""
  return {f"{k}/{w.path}": w.numpy() for k, m in state.models.items() for w in m.weights}


def tiny_flags(**overrides):
  """TINY (and overrides) as command-line flags, for tests that run the commands."""
  values = {**TINY, **overrides}
  return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def photo(height, width, seed=0):
  """A uint8 [height, width, 3] photo for tests that need some picture, so that they run where
  ../shared/data is absent: a built-in scene, cropped, with a camera's grain (on flat areas
  instance norm divides round-off by a near-zero spread: PyTorch parity fell from 3e-5 to 1e-3)."""
  scene = synthetic.warm_scenes(1, max(height, width), seed)[0, :height, :width]
  grain = np.random.default_rng(seed).normal(0, 4, scene.shape)
  return np.clip(scene + grain, 0, 255).round().astype(np.uint8)


@functools.cache
def load_tool(name):
  """A script from tools/ as a module (tools/ is not a package), loaded once: a second
  load would define its absl flags again."""
  spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def full_size_export(tmp_path_factory):
  """The reference-size generator (ngf 64, 9 blocks) at its N(0, 0.02) init, exported once."""
  keras.utils.set_random_seed(0)
  return export.save(models.resnet_generator(64, 9), str(tmp_path_factory.mktemp("full") / "a2b"))


@pytest.fixture(scope="session")
def tiny_cut_export(tmp_path_factory):
  """A tiny CUT generator (anti-aliased, ngf 4, one block) at its init, exported as a CUT run
  exports: <export>/a2b/1 alone."""
  keras.utils.set_random_seed(0)
  base = tmp_path_factory.mktemp("cut") / "export" / "a2b"
  return export.save(cut_models.cut_generator(ngf=4, n_blocks=1), str(base))


@pytest.fixture
def shared_data():
  """The real datasets, for tests whose point is their content; skips where they are absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data is absent")
  return SHARED_DATA


def oriented_jpeg(path, orientation):
  """Writes a photo as a phone would: pixels stored turned, with the EXIF orientation
  (3: rotate 180, 6: rotate 90 clockwise) that displays them upright (landscape, 180 x 256).
  Returns the upright photo as Pillow decodes and turns it."""
  turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}[orientation]
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(photo(180, 256)).transpose(turn).save(path, "JPEG", quality=95, exif=exif)
  with Image.open(path) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.fixture(autouse=True)
def cpu_kernels_auto():
  """Each test starts with the routes on: commands run in-process set the process-wide switch."""
  from cyclegan import kernels  # noqa: PLC0415
  kernels.configure("auto")
  yield
  kernels.configure("auto")
