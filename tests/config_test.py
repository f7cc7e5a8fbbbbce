"""Config resolution: defaults < configs/ file < saved workdir config < flags."""

import pytest

from cyclegan import config as config_lib


def test_defaults_are_the_reference_recipe():
  c = config_lib.Config()
  assert (c.load_size, c.crop_size, c.ngf, c.ndf, c.n_blocks, c.n_layers_d) == (286, 256, 64, 64, 9, 3)
  assert (c.gan_mode, c.lambda_a, c.lambda_b, c.lambda_identity, c.pool_size) == ("lsgan", 10, 10, 0.5, 50)
  assert (c.lr, c.beta1, c.beta2, c.adam_epsilon, c.epochs, c.epochs_decay) == (2e-4, 0.5, 0.999, 1e-8, 100, 100)


def test_no_flags_gives_the_builtin_default_and_a_dataset_picks_its_config():
  assert config_lib.resolve(None, {}).dataset == config_lib.SYNTHETIC
  assert config_lib.resolve(None, {}).name == "synthetic"
  monet = config_lib.resolve(None, {"dataset": "monet2photo", "lr": 1e-4})
  assert (monet.name, monet.lr, monet.crop_size) == ("monet2photo", 1e-4, 256)
  folder = config_lib.resolve(None, {"dataset": "/data/my_styles/"})
  assert folder.name == "my_styles" and folder.crop_size == 256
  assert folder.resolved_workdir.endswith("my_styles")
  assert config_lib.named_configs() >= ["horse2zebra", "monet2photo", "synthetic"]


def test_bad_values_say_what_is_wrong():
  with pytest.raises(config_lib.ConfigError, match="unknown config field 'lr_rate'"):
    config_lib.make_config({"lr_rate": 1})
  with pytest.raises(config_lib.ConfigError, match="gan_mode must be one of"):
    config_lib.make_config({"gan_mode": "wgan"})
  with pytest.raises(config_lib.ConfigError, match="larger than load_size"):
    config_lib.make_config({"crop_size": 300})
  with pytest.raises(config_lib.ConfigError, match="no config 'nope'"):
    config_lib.resolve("nope", {})


def test_resume_keeps_the_saved_config_and_refuses_a_different_architecture(tmp_path):
  saved = config_lib.make_config({"ngf": 8, "epochs": 3, "workdir": str(tmp_path)})
  config_lib.save(saved, tmp_path / "config.json")
  loaded = config_lib.load_saved(tmp_path / "config.json")
  fresh = config_lib.make_config({"workdir": str(tmp_path)})
  resumed = config_lib.for_resume(fresh, {"max_steps": 9}, loaded)
  assert (resumed.ngf, resumed.epochs, resumed.max_steps) == (8, 3, 9)
  with pytest.raises(config_lib.ConfigError, match="trained with ngf=8"):
    config_lib.for_resume(fresh, {"ngf": 16}, loaded)


def test_cpu_kernels_is_a_runtime_choice_a_resume_may_change(tmp_path):
  """Routes change how convolutions are computed, not the checkpoint: a resumed run may switch."""
  saved = config_lib.make_config({"cpu_kernels": "off", "workdir": str(tmp_path)})
  config_lib.save(saved, tmp_path / "config.json")
  assert config_lib.Config().cpu_kernels == "auto"
  resumed = config_lib.for_resume(saved, {"cpu_kernels": "auto"},
                                  config_lib.load_saved(tmp_path / "config.json"))
  assert resumed.cpu_kernels == "auto"
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # No temporary left.
  with pytest.raises(config_lib.ConfigError, match="cpu_kernels must be one of"):
    config_lib.make_config({"cpu_kernels": "on"})


def test_the_whole_step_compiled_takes_the_pool_where_crops_have_one_size():
  step = {"jit_compile": True, "jit_scope": "step"}
  config_lib.make_config(step)  # resize_and_crop, pool 50
  with pytest.raises(config_lib.ConfigError, match="--preprocess none gives images of many"):
    config_lib.make_config({**step, "preprocess": "none"})
  config_lib.make_config({**step, "preprocess": "none", "pool_size": 0})
  # Compiled by networks, the pool runs as a graph (each new image size compiles them anew).
  config_lib.make_config({"jit_compile": True, "preprocess": "none"})
