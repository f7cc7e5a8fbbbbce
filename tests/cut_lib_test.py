"""CUT's and FastCUT's iteration against a PyTorch re-implementation of its authors' code, and
their training runs and exports."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_tool, photo, run_steps, tiny_config

from cyclegan import config as config_lib
from cyclegan import cut_lib
from cyclegan import cut_models
from cyclegan import export
from cyclegan import train_lib

torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")
torch_reference = load_tool("torch_reference")

# Our loss names by the reference's.
REFERENCE_LOSSES = {"g_gan": "G_GAN", "nce": "NCE", "nce_y": "NCE_Y", "g_total": "G",
                    "d_total": "D"}
SIZE = 64  # layers 12 and 16 have 16 x 16 positions: 256 patches take all


def tiny_cut_config(model):
  """The model's defaults on networks small enough for the reference in float64."""
  return config_lib.make_config({**config_lib.MODEL_DEFAULTS[model], "model": model, "ngf": 8,
                                 "n_blocks": 6, "ndf": 8, "n_layers_d": 3, "precision": "fp32"})


def _torch_layers(net):
  return [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def _keras_layers(model):
  return [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]


def _copy_to_torch(networks, model):
  """Our weights into the reference's G, D and heads (TF kernels (kh, kw, in, out) ->
  (out, in, kh, kw); Dense (in, out) -> Linear (out, in))."""
  pairs = [*zip(_keras_layers(networks["generator_a2b"]), _torch_layers(model.G)),
           *zip(_keras_layers(networks["discriminator_b"]), _torch_layers(model.D)),
           *zip([d for pair in networks["patch_heads"].heads for d in pair],
                _torch_layers(model.F))]
  for layer, module in pairs:
    kernel, bias = layer.get_weights()
    kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
    module.weight.data.copy_(torch.from_numpy(kernel.copy()))
    module.bias.data.copy_(torch.from_numpy(bias))


def _torch_changes(model, before):
  """Each of G, D and the heads' change, in our layout, by our network names."""
  out = {}
  for name, net in (("generator_a2b", model.G), ("discriminator_b", model.D),
                    ("patch_heads", model.F)):
    weights = []
    for m in _torch_layers(net):
      kernel = m.weight.detach().numpy()
      weights += [kernel.transpose(2, 3, 1, 0) if kernel.ndim == 4 else kernel.T,
                  m.bias.detach().numpy()]
    out[name] = [w - b for w, b in zip(weights, before[name])]
  return out


def _weights(networks, name):
  return [w.numpy().copy() for w in networks[name].weights]


def one_iteration(config, flipped=False):
  """(our losses and changes, the reference's in float64 and float32) after one iteration
  from the same weights, images and patches, with SGD at lr 1 on both sides (each weight's
  change is minus its gradient)."""
  keras.utils.set_random_seed(0)
  networks = cut_lib.build_networks(config)
  optimizers = keras.optimizers.SGD(1.0), keras.optimizers.SGD(1.0)
  optimizers[0].build(cut_lib.generator_variables(networks))
  optimizers[1].build(networks["discriminator_b"].trainable_variables)
  names = ("generator_a2b", "discriminator_b", "patch_heads")
  before = {name: _weights(networks, name) for name in names}
  real_a = photo(SIZE, SIZE, seed=1).astype(np.float32)[None] / 127.5 - 1
  real_b = photo(SIZE, SIZE, seed=2).astype(np.float32)[None] / 127.5 - 1
  sides = [SIZE + 6, SIZE, SIZE // 2, SIZE // 4, SIZE // 4]
  rng = np.random.default_rng(0)
  patch_ids = [[rng.permutation(s * s)[:config.num_patches] for s in sides] for _ in range(2)]

  def reference(dtype):
    model = torch_reference.CUT(
        8, 6, 8, 3, lambda_nce=config.lambda_nce, nce_idt=config.nce_idt,
        flip_equivariance=config.flip_equivariance,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    to_nchw = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
    model.G.to(dtype)
    model.D.to(dtype)
    model.data_dependent_initialize(to_nchw(real_a), to_nchw(real_b), patch_ids)
    _copy_to_torch(networks, model)
    losses = model.optimize_parameters(to_nchw(real_a), to_nchw(real_b), patch_ids, flipped)
    return losses, _torch_changes(model, before)

  exact = reference(torch.float64)
  torch32 = reference(torch.float32)
  encoders = cut_lib.build_encoders(networks["generator_a2b"])
  step = tf.function(lambda a, b: cut_lib.replica_step(
      config, networks, encoders, *optimizers, a, b, tf.constant([0, 0]), 1,
      patch_ids=[[tf.constant(i) for i in ids] for ids in patch_ids], flipped=flipped))
  losses = {k: float(v) for k, v in step(tf.constant(real_a), tf.constant(real_b)).items()}
  ours = {name: [w - b for w, b in zip(_weights(networks, name), before[name])]
          for name in names}
  return (losses, ours), exact, torch32


def _norm(tensors):
  return np.sqrt(sum(np.sum(np.square(t)) for t in tensors))


def _errors(got, exact):
  """Each network's change: relative L2 distance from the exact one."""
  return {name: _norm([g - e for g, e in zip(got[name], exact[name])]) / _norm(exact[name])
          for name in exact}


@pytest.mark.parametrize("model,flipped", [("cut", False), ("fastcut", True)],
                         ids=["cut", "fastcut_flipped"])
def test_one_iteration_equals_the_reference(model, flipped):
  """Every loss term (GAN, NCE, NCE identity, D) and the changes of G, D and the heads, with
  the reference in float64 as the exact answer.

  Measured: loss terms within 1e-6 relative (bound 2e-5); changes, as relative L2 norms,
  PyTorch's float32 within 1.1e-5, ours within 4.6e-4 (CUT) and 2.9e-3 (FastCUT, flipped) for
  the generator and 3.7e-6 for D and the heads (bound 2e-2, as for CycleGAN's iteration in
  tests/train_lib_test.py, where float32 puts a few ReLU inputs within ~1e-6 of 0 on the other
  side). What the bounds catch (each checked by breaking the step): NCE on layer 15 instead of
  16 (NCE off by 4e-4), query patches at other positions than their keys' (NCE off by 7%),
  keys that pass gradients (the heads' change off by 16%), the generator's loss also updating
  D (D's change off by 876x).
  """
  config = tiny_cut_config(model)
  (losses, ours), (exact_losses, exact), (_, torch32) = one_iteration(config, flipped)
  names = [k for k in REFERENCE_LOSSES if config.nce_idt or k != "nce_y"]
  for name in names:
    assert losses[name] == pytest.approx(exact_losses[REFERENCE_LOSSES[name]], rel=2e-5), name
  errors, torch_errors = _errors(ours, exact), _errors(torch32, exact)
  print("ours", errors, "torch float32", torch_errors)
  assert max(torch_errors.values()) <= 1e-4
  assert max(errors.values()) <= 2e-2, errors


# --- Training runs -------------------------------------------------------------------------

def _cut_run(tmp_path, model, **overrides):
  """The tiny test model as CUT or FastCUT (5 blocks: PatchNCE reads block 5's output)."""
  defaults = {k: v for k, v in config_lib.MODEL_DEFAULTS[model].items()
              if k not in ("epochs", "epochs_decay")}
  return tiny_config(tmp_path, model=model, n_blocks=5, **{**defaults, **overrides})


def _checkpoint(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


@pytest.mark.parametrize("model", ["cut", "fastcut"])
def test_cut_trains_resumes_exactly_and_exports_a2b_only(tmp_path, model):
  """Two steps and then two more equal four in one run (weights, heads, Adam slots: FastCUT's
  coin and the patches are functions of the step); the export is one direction, at any size,
  and rebuilds as a CUT generator."""
  straight = _cut_run(tmp_path / "straight", model, max_steps=4, checkpoint_every=100)
  train_lib.train(straight)
  split = _cut_run(tmp_path / "split", model, max_steps=2, checkpoint_every=100)
  train_lib.train(split)
  train_lib.train(split.replace(max_steps=4))
  want, got = _checkpoint(straight.workdir), _checkpoint(split.workdir)
  assert want.keys() == got.keys()
  # Variables are saved under the optimizer that updates them: G's and the five heads' (two
  # Dense layers, kernel and bias each) under optimizer_g.
  g_variables = sum(k.startswith("optimizer_g/_trainable_variables/") for k in want)
  assert g_variables == len(cut_models.cut_generator(4, 5).trainable_weights) + 5 * 4
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)

  paths = export.export_from_workdir(split.workdir, str(tmp_path / "export"))
  assert list(paths) == ["a2b"] and not os.path.exists(tmp_path / "export" / "b2a")
  with pytest.raises(FileNotFoundError, match="A->B only"):  # what translate and serve say
    export.resolve_version(str(tmp_path / "export" / "b2a"))
  loaded = tf.saved_model.load(paths["a2b"])
  x = photo(37, 50)[None]
  out = loaded.signatures["translate_uint8"](images=tf.constant(x))["images"].numpy()
  assert out.shape == x.shape
  rebuilt = export.generator_of(loaded)
  assert any(isinstance(layer, cut_models.BlurUpsample) for layer in rebuilt.layers)
  replayed = tf.function(export.any_size.translate_uint8)(rebuilt, tf.constant(x)).numpy()
  assert np.abs(replayed.astype(int) - out).max() <= 1


def test_cut_presets_and_their_own_workdir():
  cut = config_lib.resolve(None, {"model": "cut"})
  fast = config_lib.resolve(None, {"model": "fastcut", "lambda_nce": 5.0})
  assert (cut.name, cut.epochs, cut.lambda_nce, cut.nce_idt, cut.flip_equivariance) == (
      "synthetic_cut", 3, 1.0, True, False)  # the built-in config's epochs win over CUT's
  assert (fast.lambda_nce, fast.nce_idt, fast.flip_equivariance) == (5.0, False, True)
  assert config_lib.resolve(None, {"model": "cut", "dataset": "data/h2z"}).epochs == 200
  with pytest.raises(config_lib.ConfigError, match="n_blocks >= 5"):
    config_lib.resolve(None, {"model": "cut", "n_blocks": 4})
  with pytest.raises(config_lib.ConfigError, match="init_a2b"):
    config_lib.resolve(None, {"model": "fastcut", "init_a2b": "x.pth"})


def test_the_compiled_step_samples_the_traced_steps_patches_and_flips(tmp_path):
  """--jit_compile, both --jit_scope: two FastCUT steps (patches and a flip coin each)
  compiled by XLA and traced, from the same weights and noise batches, agree within 1e-5
  (measured: by networks equal, whole 1.8e-7 and equal). Patches or a flip drawn otherwise are off by far more: with float
  draws, as before, the first step was 2.9% off."""
  config = tiny_cut_config("fastcut").replace(workdir=str(tmp_path), lr=0.01, adam_epsilon=1.0,
                                              crop_size=SIZE, load_size=SIZE)
  rng = np.random.default_rng(0)
  noise = lambda: rng.uniform(-1, 1, (1, config.crop_size, config.crop_size, 3))
  batches = [{"a": noise().astype(np.float32), "b": noise().astype(np.float32)}
             for _ in range(2)]

  traced = run_steps(config, batches)[0]
  for scope in ("networks", "step"):
    compiled = run_steps(config.replace(jit_compile=True, jit_scope=scope), batches)[0]
    for want, got in zip(traced, compiled):
      assert got == pytest.approx(want, rel=1e-5), scope
