"""Train a CycleGAN and export both directions as SavedModels.

  python -m cyclegan.train                                  # built-in dataset, a few minutes
  python -m cyclegan.train --dataset monet2photo            # the reference recipe on TFDS
  python -m cyclegan.train --dataset path/to/folder --max_steps 1000

Running the same command again resumes from the workdir's latest checkpoint. Every config field
is also a flag (--help lists them); `--config` names a file in configs/ or a path to one.
"""

import sys

from absl import flags, logging

from cyclegan import cli
from cyclegan import config as config_lib
from cyclegan import export as export_lib
from cyclegan import kernels
from cyclegan import runtime
from cyclegan import train_lib
from cyclegan import workdir as workdir_lib

FLAGS = flags.FLAGS


def define_flags():
  """--config, and every config field as a flag (default None: `present` tells what was set)."""
  flags.DEFINE_string(
      "config", None, "Config name in configs/ or a path to a config file (default: the "
      "dataset's own config if configs/ has one, else the reference recipe).")
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


def resolve_config(config_name, overrides):
  """The config to run: a resumed workdir's saved config wins over the config file."""
  config = config_lib.resolve(config_name, overrides)
  saved = workdir_lib.load_config(config.resolved_workdir)
  return config_lib.for_resume(config, overrides, saved.to_dict()) if saved else config


def main(argv):
  cli.no_arguments(argv)
  overrides = {name: FLAGS[name].value for name in config_lib.FIELDS if FLAGS[name].present}
  config = resolve_config(FLAGS.config, overrides)
  logging.info("config: %s", config)
  runtime.configure_threads()
  strategy = runtime.make_strategy(config.strategy, config.tpu)
  runtime.configure_process(config)
  kernels.configure(config.cpu_kernels)
  try:
    workdir = train_lib.train(config, strategy)
  except KeyboardInterrupt:
    sys.exit("interrupted: run the same command again to resume")
  if workdir and config.export:  # The chief exports; other workers return None.
    try:
      paths = export_lib.export_from_workdir(workdir, config.resolved_export_dir,
                                             which=config.export_checkpoint)
    except (OSError, ValueError) as e:
      raise cli.UserError(f"training is done, but exporting failed: {e}") from None
    print(export_lib.usage(paths))


if __name__ == "__main__":
  cli.run(main, define_flags)
