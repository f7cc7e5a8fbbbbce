"""Import a PyTorch CycleGAN or CUT generator checkpoint (a state dict) as a SavedModel.

  python -m cyclegan.convert_torch style_monet.pth --export_dir saved_models/style_monet

Reads the reference's ResnetGenerator state dict (`latest_net_G_A.pth`, `style_monet.pth`, ...)
or CUT's (`latest_net_G.pth`) without PyTorch (pth_reader, which runs no code from the file),
checks every key and shape, and writes DIR/<version>/ with the same signatures as a trained
export.
"""

import re

import numpy as np
from absl import flags, logging

from cyclegan import cli
from cyclegan import cut_models
from cyclegan import export
from cyclegan import models
from cyclegan import portable
from cyclegan import pth_reader

IGNORED_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


class ConversionError(cli.UserError, ValueError):
  """A checkpoint that is not a reference generator; the message says what was found."""


def load_state_dict(path, data=None):
  """{key: float32 numpy array} from a .pth file (or its bytes, `data`, named `path` in
  errors), read without PyTorch (pth_reader), so that no code in the file runs."""
  try:
    state = pth_reader.load(path if data is None else data)
  except FileNotFoundError as e:
    raise ConversionError(f"{path} does not exist") from e
  except IsADirectoryError as e:
    raise ConversionError(f"{path} is a folder, not a .pth file") from e
  except pth_reader.PthError as e:
    raise ConversionError(f"{path}: {e}") from e
  return {re.sub(r"^module\.", "", k): v.astype(np.float32) for k, v in state.items()}


def _describe(keys, limit=6):
  keys = sorted(keys)
  return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _blur_filters(first_block, n_blocks):
  """{key: the filter CUT's layer at that key holds}: its anti-aliased Downsample (3x3
  binomial) after each down convolution and Upsample (4x4 binomial, x4) before each up one."""
  after = first_block + n_blocks
  down, up = (np.outer(cut_models.binomial(n), cut_models.binomial(n)) for n in (3, 4))
  return {"model.7.filt": down, "model.11.filt": down, f"model.{after}.filt": 4 * up,
          f"model.{after + 4}.filt": 4 * up}


def generator_layers(state):
  """(builder, ngf, n_blocks, {our layer name: pytorch key prefix}): CycleGAN's ResNet
  generator (models.resnet_generator), or CUT's anti-aliased one (cut_models.cut_generator),
  told apart by CUT's blur filters, stored as `filt` buffers."""
  keys = {k for k in state if not k.endswith(IGNORED_SUFFIXES)}
  if "model.0.weight" in keys and state["model.0.weight"].shape[-1] == 4:
    raise ConversionError("this is a PatchGAN discriminator checkpoint (model.0 is a 4x4 conv): "
                          "convert a generator (e.g. latest_net_G_A.pth)")
  if "model.1.weight" not in keys:
    raise ConversionError(f"not a ResNet generator state dict: no model.1.weight; found {_describe(keys)}")
  antialiased = "model.7.filt" in keys
  first = 12 if antialiased else 10
  blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
  n_blocks = len(blocks)
  if n_blocks == 0 or blocks != list(range(first, first + n_blocks)):
    raise ConversionError(f"residual blocks must be model.{first} onwards; found {blocks or 'none'}")
  second = 6 if any(k.startswith(f"model.{first}.conv_block.6.") for k in keys) else 5  # dropout
  after = first + n_blocks
  if antialiased:
    layers = {"stem_conv": "model.1", "down0_conv": "model.4", "down1_conv": "model.8",
              "up0_conv": f"model.{after + 1}", "up1_conv": f"model.{after + 5}",
              "head_conv": f"model.{after + 9}"}
    filters = _blur_filters(first, n_blocks)
  else:
    layers = {"stem_conv": "model.1", "down0_conv": "model.4", "down1_conv": "model.7",
              "up0_deconv": f"model.{after}", "up1_deconv": f"model.{after + 3}",
              "head_conv": f"model.{after + 7}"}
    filters = {}
  for i in range(n_blocks):
    layers[f"block{i}_conv1"] = f"model.{first + i}.conv_block.1"
    layers[f"block{i}_conv2"] = f"model.{first + i}.conv_block.{second}"
  kind = f"{n_blocks}-block {'CUT ' if antialiased else ''}generator"
  expected = {f"{prefix}.{p}" for prefix in layers.values() for p in ("weight", "bias")}
  expected |= set(filters)
  if keys - expected:
    raise ConversionError(f"unexpected keys for a {kind}: {_describe(keys - expected)}")
  if expected - keys:
    raise ConversionError(f"missing keys for a {kind}: {_describe(expected - keys)}")
  for key, blur in filters.items():
    if not (state[key].shape[1:] == (1, *blur.shape) and np.allclose(state[key], blur, atol=1e-6)):
      raise ConversionError(f"{key} is not CUT's binomial blur filter of its size: this layout "
                            "is not one this converter knows")
  ngf = state["model.1.weight"].shape[0]
  build = cut_models.cut_generator if antialiased else models.resnet_generator
  return build, ngf, n_blocks, layers


def to_keras(state):
  """A float32 Keras generator carrying the checkpoint's weights."""
  build, ngf, n_blocks, layers = generator_layers(state)
  generator = build(ngf, n_blocks)
  for name, prefix in layers.items():
    layer = generator.get_layer(name)
    # Conv (out, in, kh, kw) and ConvTranspose (in, out, kh, kw) both map by (2, 3, 1, 0).
    kernel = state[f"{prefix}.weight"].transpose(2, 3, 1, 0)
    bias = state[f"{prefix}.bias"]
    if kernel.shape != tuple(layer.kernel.shape) or bias.shape != tuple(layer.bias.shape):
      raise ConversionError(
          f"{prefix}.weight has shape {state[f'{prefix}.weight'].shape}, which does not fit a "
          f"generator with ngf={ngf} (expected kernel {tuple(layer.kernel.shape)} in Keras layout)")
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
  return generator


def load_generator(path):
  return to_keras(load_state_dict(path))


def convert(path, export_dir, version=None):
  generator = load_generator(path)
  out = export.save(generator, export_dir, version)
  logging.info("converted %s (ngf=%d) to %s", path, generator.get_layer("stem_conv").filters, out)
  return out


def define_flags():
  flags.DEFINE_string("export_dir", None, "Writes <export_dir>/<version>/ (TF Serving layout).",
                      required=True)
  flags.DEFINE_integer("version", None, "Version folder (default: the next free number).")
  portable.define_flags()


def main(argv):
  if len(argv) != 2:
    raise cli.UserError("usage: python -m cyclegan.convert_torch CHECKPOINT.pth --export_dir DIR")
  formats, size = portable.from_flags()
  try:
    path = convert(argv[1], flags.FLAGS.export_dir, flags.FLAGS.version)
  except OSError as e:
    raise cli.UserError(str(e)) from None
  print(f"SavedModel: {path}\n  translate: python -m cyclegan.translate --model "
        f"{flags.FLAGS.export_dir} --input photos/ --output out/")
  if formats:
    export.write_formats(path, formats, size)
  return 0


if __name__ == "__main__":
  cli.run(main, define_flags, bare_values={"formats": "all"})
