"""Machine-dependent defaults: which precision and graph optimizer `auto` picks, and why."""

import io
import os

import keras
import pytest
import tensorflow as tf

from cyclegan import config as config_lib
from cyclegan import runtime

FULL = dict(ngf=64, crop_size=256)
TINY = dict(ngf=16, crop_size=64)  # The built-in default's model.


@pytest.fixture
def restore_process_settings():
  policy = keras.mixed_precision.global_policy()
  options = tf.config.optimizer.get_experimental_options()
  yield
  keras.mixed_precision.set_global_policy(policy)
  tf.config.optimizer.set_experimental_options(
      {"disable_meta_optimizer": options.get("disable_meta_optimizer", False)})


def _fake_gpus(monkeypatch, capabilities):
  gpus = [f"GPU:{i}" for i in range(len(capabilities))]
  real = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: gpus if kind == "GPU" else real(kind))
  monkeypatch.setattr(tf.config.experimental, "get_device_details",
                      lambda gpu: {"compute_capability": capabilities[gpus.index(gpu)]})


@pytest.mark.parametrize("has_bf16,model,expected", [
    (True, FULL, "bf16"), (True, TINY, "fp32"), (False, FULL, "fp32")])
def test_cpu_picks_bf16_only_where_it_is_native_and_pays(monkeypatch, has_bf16, model, expected):
  monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
  _fake_gpus(monkeypatch, [])
  config = config_lib.make_config(dict(model, load_size=model["crop_size"]))
  assert runtime.auto_precision(config)[0] == expected


def test_work_is_per_replica(monkeypatch):
  monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
  _fake_gpus(monkeypatch, [])
  config = config_lib.make_config(dict(ngf=32, crop_size=96, load_size=96, batch_size=2))
  assert runtime.auto_precision(config, num_replicas=1)[0] == "bf16"
  assert runtime.auto_precision(config, num_replicas=2)[0] == "fp32"


@pytest.mark.parametrize("capabilities,expected", [
    ([(9, 0)], "bf16"), ([(8, 0), (8, 6)], "bf16"), ([(7, 5)], "fp16"), ([(8, 0), (7, 0)], "fp16"),
    ([(6, 1)], "fp32")])
def test_gpus_by_compute_capability(monkeypatch, capabilities, expected):
  _fake_gpus(monkeypatch, capabilities)
  big = config_lib.make_config(dict(FULL, load_size=286, batch_size=4))
  assert runtime.auto_precision(big)[0] == expected


@pytest.mark.parametrize("model,batch_size,replicas,expected", [
    (TINY, 1, 1, "fp32"), (FULL, 1, 1, "fp32"), (FULL, 2, 1, "bf16"), (FULL, 2, 2, "fp32")])
def test_small_steps_on_tf32_gpus_are_fp32(monkeypatch, model, batch_size, replicas, expected):
  """Up to the full model at 256 px, batch 1 per replica (measured on an H100), fp32 (TF32)."""
  _fake_gpus(monkeypatch, [(9, 0)] * replicas)
  config = config_lib.make_config(dict(model, load_size=model["crop_size"], batch_size=batch_size))
  assert runtime.auto_precision(config, num_replicas=replicas)[0] == expected


def test_tpu_is_bf16():
  assert runtime.auto_precision(config_lib.make_config({"strategy": "tpu"}))[0] == "bf16"


@pytest.mark.parametrize("cpuinfo,expected", [
    ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),
    ("flags\t\t: fpu amx_tile amx_bf16\nbugs\t\t: spectre_v1\n", True),
    ("flags\t\t: fpu avx2 avx512f avx512_vnni\nbugs\t\t: avx512_bf16\n", False),
    ("processor\t: 0\nmodel name\t: no flags line\n", False),
    (None, False)])
def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, cpuinfo, expected):
  """Only the flags line counts; an unreadable /proc/cpuinfo (not Linux) means no bf16."""
  def fake_open(path):
    assert path == "/proc/cpuinfo"
    if cpuinfo is None:
      raise FileNotFoundError(path)
    return io.StringIO(cpuinfo)
  monkeypatch.setattr(runtime, "open", fake_open, raising=False)
  assert runtime.cpu_has_bf16() is expected


def test_resolve_picks_and_configure_process_applies_the_choice(monkeypatch,
                                                               restore_process_settings):
  monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
  _fake_gpus(monkeypatch, [])
  full = config_lib.make_config(dict(FULL, load_size=286))
  config = runtime.resolve(full)
  assert config.precision == "bf16"
  runtime.configure_process(config)
  assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]
  explicit = config_lib.make_config(dict(FULL, load_size=286, precision="fp32",
                                         graph_optimizer="on"))
  assert runtime.resolve(explicit).precision == "fp32"
  runtime.configure_process(explicit)
  assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
  runtime.configure_process(config_lib.make_config(dict(TINY, load_size=64)))
  assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]
  _fake_gpus(monkeypatch, [(8, 0)])
  runtime.configure_process(full)
  assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
  assert keras.mixed_precision.global_policy().name == "float32"  # Precision is passed, not set.


def test_configure_process_caches_onednn_primitives_unless_told(monkeypatch,
                                                                 restore_process_settings):
  tiny = config_lib.make_config(TINY)
  monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                      if k != "TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE"})
  runtime.configure_process(tiny)
  assert os.environ["TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE"] == "false"
  monkeypatch.setenv("TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE", "true")
  runtime.configure_process(tiny)
  assert os.environ["TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE"] == "true"


def test_several_steps_per_call_on_accelerators_one_on_cpu(monkeypatch):
  _fake_gpus(monkeypatch, [])
  tiny = config_lib.make_config(TINY)
  assert not runtime.multi_step_calls(tiny)
  assert runtime.multi_step_calls(tiny.replace(steps_per_call=4))
  assert runtime.multi_step_calls(tiny.replace(strategy="tpu"))
  _fake_gpus(monkeypatch, [(8, 0)])
  assert runtime.multi_step_calls(tiny)
  assert not runtime.multi_step_calls(tiny.replace(steps_per_call=1))
