"""One flat, typed config; files in configs/ and command-line flags override its defaults.

The defaults are the reference recipe (the original CycleGAN's); `--model cut|fastcut` starts
from its authors' recipe instead (MODEL_DEFAULTS). Resolution order, later wins: dataclass
defaults < the model's defaults < configs/<name>.py < the config saved in a resumed workdir <
explicit flags.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib

from cyclegan import cli
from cyclegan import files

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
SYNTHETIC = "synthetic"
# Fields that fix the shape of the checkpoint or the data; a resumed run may not change them.
ARCHITECTURE_FIELDS = ("model", "ngf", "ndf", "n_blocks", "n_layers_d", "antialias", "dataset",
                       "batch_size", "seed")
# CUT's and FastCUT's recipes, as their authors' code sets them (Park et al., ECCV 2020).
MODEL_DEFAULTS = {
    "cut": dict(epochs=200, epochs_decay=200, lambda_nce=1.0, nce_idt=True,
                flip_equivariance=False, pool_size=0, jitter_in_decay=False),
    "fastcut": dict(epochs=150, epochs_decay=50, lambda_nce=10.0, nce_idt=False,
                    flip_equivariance=True, pool_size=0, jitter_in_decay=False),
}


class ConfigError(cli.UserError, ValueError):
  """A config or flag value that cannot work; the message says what to change."""


def _field(default, help_text, choices=None):
  return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Config:
  name: str = _field("run", "Run name: names the default workdir and export folder.")
  dataset: str = _field(
      SYNTHETIC, "'synthetic' (built-in, no files), a TFDS cycle_gan config name such as "
      "'monet2photo', or a folder with trainA/ and trainB/.")
  tfds_data_dir: str = _field("", "TFDS data_dir (default: TFDS's own, ~/tensorflow_datasets).")
  # Preprocessing, as the reference's options.
  preprocess: str = _field(
      "resize_and_crop", "Training-image preprocessing, as the reference's: resize_and_crop "
      "(load_size square, random crop_size crop), crop (random crop_size crop), scale_width "
      "(width load_size, aspect kept, height at least crop_size), scale_width_and_crop (that, "
      "then a random crop_size crop; e.g. high-resolution data), none (sides rounded to "
      "multiples of 4). Then a random horizontal flip unless --noflip.",
      ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"))
  load_size: int = _field(286, "Resize to this size before cropping.")
  crop_size: int = _field(256, "Random-crop size for training.")
  flip: bool = _field(True, "Random horizontal flips in training.")
  # Models.
  model: str = _field(
      "cycle_gan", "cycle_gan: two generators and two discriminators, cycle-consistent (Zhu et al. "
      "2017). cut: one generator A->B and one discriminator, with PatchNCE instead of cycles "
      "(Park et al. 2020); fastcut: CUT without NCE identity, lambda_nce 10, flip equivariance, "
      "150 + 50 epochs. CUT models export a2b only.", ("cycle_gan", "cut", "fastcut"))
  ngf: int = _field(64, "Generator filters in the first layer.")
  ndf: int = _field(64, "Discriminator filters in the first layer.")
  n_blocks: int = _field(9, "Residual blocks in each generator (9 for 256 px, 6 for 128 px).")
  n_layers_d: int = _field(3, "PatchGAN conv layers (3 = 70x70 patches).")
  antialias: bool = _field(True, "CUT: anti-aliased down- and upsampling in the generator and "
                           "discriminator (the authors' default); --noantialias: strided and "
                           "transposed convolutions, as CycleGAN's.")
  # Losses.
  gan_mode: str = _field("lsgan", "Adversarial loss.", ("lsgan", "vanilla"))
  lambda_a: float = _field(10.0, "Weight of the A->B->A cycle loss.")
  lambda_b: float = _field(10.0, "Weight of the B->A->B cycle loss.")
  lambda_identity: float = _field(
      0.5, "Identity loss weight, as a fraction of lambda_a/lambda_b; 0 turns it off.")
  pool_size: int = _field(50, "Fake-image pool per discriminator; 0 turns it off.")
  lambda_nce: float = _field(1.0, "CUT: weight of the PatchNCE loss (fastcut: 10).")
  nce_idt: bool = _field(True, "CUT: PatchNCE on B -> G(B) too (identity), averaged with A's.")
  flip_equivariance: bool = _field(False, "CUT: on half the steps, translate the inputs "
                                   "mirrored and compare patches mirrored back (fastcut).")
  num_patches: int = _field(256, "CUT: positions sampled per layer for PatchNCE.")
  init_a2b: str = _field(
      "", "PyTorch reference generator (.pth state dict) to start generator_a2b from, for "
      "fine-tuning; read only when the workdir has no checkpoint yet.")
  init_b2a: str = _field("", "As --init_a2b, for generator_b2a.")
  # Optimisation.
  lr: float = _field(2e-4, "Initial Adam learning rate for both optimizers.")
  beta1: float = _field(0.5, "Adam beta1.")
  beta2: float = _field(0.999, "Adam beta2.")
  adam_epsilon: float = _field(1e-8, "Adam epsilon (PyTorch's default, not Keras's 1e-7).")
  epochs: int = _field(100, "Epochs at the initial learning rate.")
  epochs_decay: int = _field(100, "Epochs of linear decay to zero after that.")
  jitter_in_decay: bool = _field(True, "Random resize-and-crop jitter in the decay epochs too; "
                                 "CUT's authors load at crop_size there (no jitter, flips "
                                 "stay): false for --model cut and fastcut.")
  batch_size: int = _field(1, "Global batch size, split across replicas.")
  seed: int = _field(0, "Seed of all randomness: data order, crops, flips, init, image pool.")
  # Runtime.
  strategy: str = _field("auto", "tf.distribute strategy; auto = mirrored with >1 GPU, else default.",
                         ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu"))
  tpu: str = _field("", "TPU address for --strategy tpu (empty: the local TPU).")
  precision: str = _field(
      "auto", "Compute precision (weights stay float32). auto: bf16 for models big enough to "
      "gain, on GPUs with bf16 (compute capability 8+; smaller steps run fp32 as TF32 there) and "
      "on CPUs with AVX512_BF16/AMX; fp16 with loss scaling on older GPUs (7.x); fp32 elsewhere.",
      ("auto", "fp32", "bf16", "fp16"))
  jit_compile: bool = _field(False, "Compile the train step with XLA, as --jit_scope says (off: "
                             "slower on CPU, docs/performance.md).")
  jit_scope: str = _field(
      "networks", "What --jit_compile compiles: networks, each network's forward and backward "
      "once per image size (fast to compile; the losses, pool and updates run as a graph); "
      "step, the whole step as one program (slow to compile, the most fusion). TPUs compile "
      "the whole step.",
      ("networks", "step"))
  graph_optimizer: str = _field(
      "auto", "TensorFlow's graph optimizer (Grappler). auto: off on CPU-only machines (it adds "
      "3-8 s to the first step and nothing to the step time), else on.",
      ("auto", "on", "off"))
  cpu_kernels: str = _field(
      "auto", "CPU convolution routes (cyclegan/kernels/): auto takes them where they pay, on "
      "machines without a GPU; off traces plain convolutions (oneDNN's) everywhere.",
      ("auto", "off"))
  steps_per_call: int = _field(
      0, "Train steps per tf.function call, with no host round trip between them; a call also "
      "ends at each step that logs or saves. 0: auto, about a second of steps on GPUs and TPUs, "
      "one on CPU-only machines (where several cost memory and gain nothing: measured).")
  max_steps: int = _field(0, "Stop after this many steps in total (0: the full schedule).")
  checkpoint_every: int = _field(1000, "Save a checkpoint every this many steps.")
  keep_checkpoints: int = _field(3, "Checkpoints to keep.")
  log_every: int = _field(50, "Log losses, images/s and ETA every this many steps.")
  image_every: int = _field(1000, "Write TensorBoard image grids every this many steps.")
  eval_every: int = _field(
      -1, "Evaluate on held-out images every this many steps: the quality metrics (see "
      "--best_metric), alarms, TensorBoard and <workdir>/samples/index.html. -1: at each "
      "checkpoint when the data has a test split (the built-in set and TFDS do), else off; 0: off.")
  best_metric: str = _field(
      "auto", "What picks the best checkpoint, kept out of rotation and exported: auto takes "
      "psnr where the data has ground-truth pairs (the built-in set), else kid with Inception "
      "weights (see --inception), else swd (patch statistics, no weights needed).",
      ("auto", "psnr", "ssim", "kid", "fid", "swd"))
  inception: str = _field(
      "auto", "Inception for KID/FID: auto (the 2015 one that published FIDs use if its file "
      "is found, else Keras's, else none), fid2015, keras, none, or a .pth/.h5 file.")
  stop_on_alarm: bool = _field(False, "Stop (checkpoints kept) when an alarm is raised: "
                               "collapse, outputs equal to inputs, a discriminator winning.")
  export_checkpoint: str = _field(
      "best", "Which checkpoint the run exports at the end: best (by --best_metric; the latest "
      "where nothing was evaluated) or latest.", ("best", "latest"))
  workdir: str = _field("", "Checkpoints, logs and config (default: workdirs/<name>).")
  export_dir: str = _field("", "Where SavedModels go (default: saved_models/<name>).")
  export: bool = _field(True, "Export SavedModels when training ends.")
  # The built-in synthetic dataset.
  synthetic_size: int = _field(72, "Side of the built-in dataset's images.")
  synthetic_train: int = _field(256, "Training images per domain in the built-in dataset.")
  synthetic_test: int = _field(64, "Held-out paired test images in the built-in dataset.")

  @property
  def resolved_workdir(self):
    return self.workdir or os.path.join("workdirs", self.name)

  @property
  def resolved_export_dir(self):
    return self.export_dir or os.path.join("saved_models", self.name)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def to_dict(self):
    return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def named_configs():
  return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config_file(name_or_path):
  """Overrides from configs/<name>.py (or a path to such a file): its get_config() dict."""
  path = pathlib.Path(name_or_path)
  if path.suffix != ".py":
    path = CONFIGS_DIR / f"{name_or_path}.py"
  if not path.is_file():
    raise ConfigError(f"no config {name_or_path!r}: use a file path or one of {named_configs()}")
  spec = importlib.util.spec_from_file_location(f"cyclegan_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def make_config(overrides):
  """Builds a Config from a dict, checking names, types and choices."""
  values = {}
  for key, value in overrides.items():
    if key not in FIELDS:
      raise ConfigError(f"unknown config field {key!r}")
    field = FIELDS[key]
    kind = type(field.default)
    if kind is float and isinstance(value, int):
      value = float(value)
    if not isinstance(value, kind):
      raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    if field.metadata["choices"] and value not in field.metadata["choices"]:
      raise ConfigError(f"{key} must be one of {field.metadata['choices']}, got {value!r}")
    values[key] = value
  config = Config(**values)
  _validate(config)
  return config


def _validate(c):
  positive = ("ngf", "ndf", "n_blocks", "n_layers_d", "batch_size", "crop_size", "load_size",
              "checkpoint_every", "log_every", "image_every", "keep_checkpoints")
  for key in positive:
    if getattr(c, key) <= 0:
      raise ConfigError(f"{key} must be positive, got {getattr(c, key)}")
  if "crop" in c.preprocess and c.crop_size % 4:
    raise ConfigError(f"crop_size must be a multiple of 4, got {c.crop_size}")
  if c.preprocess in ("resize_and_crop", "scale_width_and_crop") and c.crop_size > c.load_size:
    raise ConfigError(f"crop_size {c.crop_size} is larger than load_size {c.load_size}")
  if c.epochs + c.epochs_decay <= 0:
    raise ConfigError("epochs + epochs_decay must be positive")
  if c.jit_compile and c.jit_scope == "step" and c.pool_size and "crop" not in c.preprocess:
    raise ConfigError(f"--jit_scope step compiles the image pool with XLA, which needs its "
                      f"images of one size; --preprocess {c.preprocess} gives images of many "
                      "sizes: use a mode with a crop, --jit_scope networks or --pool_size 0")
  if c.model != "cycle_gan" and (c.init_a2b or c.init_b2a):
    raise ConfigError(f"--init_a2b/--init_b2a start CycleGAN generators; --model {c.model} "
                      "cannot start from a .pth yet")
  if c.model != "cycle_gan" and c.num_patches <= 0:
    raise ConfigError(f"num_patches must be positive, got {c.num_patches}")
  if c.model != "cycle_gan" and c.n_blocks < 5:
    raise ConfigError(f"--model {c.model} needs n_blocks >= 5 (PatchNCE reads the output of "
                      f"residual block 5), got {c.n_blocks}")
  if min(c.max_steps, c.pool_size, c.lambda_identity, c.lambda_a, c.lambda_b, c.steps_per_call,
         c.lambda_nce) < 0:
    raise ConfigError("max_steps, pool_size, steps_per_call and the lambdas must not be negative")
  if c.eval_every < -1:
    raise ConfigError(f"eval_every must be -1 (at each checkpoint), 0 (off) or positive, got "
                      f"{c.eval_every}")


def resolve(config_name, flag_overrides):
  """Config from a named file (default: the dataset's own config if one exists) plus flags."""
  if not config_name:
    dataset = flag_overrides.get("dataset", SYNTHETIC)
    config_name = dataset if dataset in named_configs() else None
  base = load_config_file(config_name) if config_name else {
      "name": _default_name(flag_overrides.get("dataset", SYNTHETIC))}
  model = flag_overrides.get("model", base.get("model", "cycle_gan"))
  if model != "cycle_gan" and "name" not in flag_overrides and "model" not in base:
    base = {**base, "name": f"{base['name']}_{model}"}  # its own workdir and exports
  return make_config({**MODEL_DEFAULTS.get(model, {}), **base, **flag_overrides})


def _default_name(dataset):
  return pathlib.Path(dataset.rstrip("/")).name or "run"


def for_resume(config, flag_overrides, saved):
  """The config a run in an existing workdir continues with: saved values, then explicit flags."""
  saved_config = make_config(saved)
  for key in ARCHITECTURE_FIELDS:
    if key in flag_overrides and flag_overrides[key] != getattr(saved_config, key):
      raise ConfigError(
          f"workdir {config.resolved_workdir} was trained with {key}={getattr(saved_config, key)!r};"
          f" use the same value or a new --workdir")
  return make_config({**saved, **flag_overrides})


def save(config, path):
  """Atomic write, so a kill never leaves a half-written config."""
  with files.atomic_open(path) as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)


def load_saved(path):
  with open(path) as f:
    return json.load(f)
