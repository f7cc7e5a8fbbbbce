"""Train a CycleGAN and export both directions as SavedModels.

  python -m cyclegan.train                                  # built-in dataset, a few minutes
  python -m cyclegan.train --dataset monet2photo            # the reference recipe on TFDS
  python -m cyclegan.train --dataset path/to/folder --max_steps 1000

Running the same command again resumes from the workdir's latest checkpoint. Every config field
is also a flag (--help lists them); `--config` names a file in configs/ or a path to one.
"""

import os
import sys

from absl import app, flags, logging

from cyclegan import config as config_lib
from cyclegan import convert_torch
from cyclegan import export as export_lib
from cyclegan import input_pipeline
from cyclegan import runtime
from cyclegan import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "config", None, "Config name in configs/ or a path to a config file (default: the "
    "dataset's own config if configs/ has one, else the reference recipe).")


def _define_config_flags():
  for field in config_lib.FIELDS.values():
    help_text = f"{field.metadata['help']} (default: {field.default!r})"
    kind = type(field.default)
    if field.metadata["choices"]:
      flags.DEFINE_enum(field.name, None, field.metadata["choices"], help_text)
    elif kind is bool:
      flags.DEFINE_bool(field.name, None, help_text)
    elif kind is int:
      flags.DEFINE_integer(field.name, None, help_text)
    elif kind is float:
      flags.DEFINE_float(field.name, None, help_text)
    else:
      flags.DEFINE_string(field.name, None, help_text)


_define_config_flags()


def resolve_config(config_name, overrides):
  """The config to run: a resumed workdir's saved config wins over the config file."""
  config = config_lib.resolve(config_name, overrides)
  saved_path = os.path.join(config.resolved_workdir, "config.json")
  if os.path.exists(saved_path):
    config = config_lib.for_resume(config, overrides, config_lib.load_saved(saved_path))
  return config


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; options are flags, see --help")
  overrides = {name: FLAGS[name].value for name in config_lib.FIELDS if FLAGS[name].present}
  try:
    config = resolve_config(FLAGS.config, overrides)
    logging.info("config: %s", config)
    strategy = runtime.make_strategy(config.strategy, config.tpu)
    runtime.configure_process(config, strategy.num_replicas_in_sync)
    paths = train_lib.train(config, strategy)
  except (config_lib.ConfigError, input_pipeline.DataError, train_lib.TrainingError,
          convert_torch.ConversionError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit("interrupted: run the same command again to resume")
  if paths:
    print(export_lib.usage(paths))


if __name__ == "__main__":
  app.run(main)
