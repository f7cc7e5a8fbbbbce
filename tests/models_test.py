"""Parameter counts at full size, and numerics against a numpy version of the PyTorch reference."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cyclegan import models


# --- numpy reference, written from the reference's layer list (PyTorch layouts) ---

def np_conv(x, w, b, stride=1, pad=0):
  """PyTorch Conv2d on one HWC image; w: (out, in, kh, kw); zero padding."""
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  windows = sliding_window_view(x, w.shape[2:], axis=(0, 1))[::stride, ::stride]
  return np.einsum("hwckl,ockl->hwo", windows, w) + b


def np_conv_transpose(x, w, b):
  """PyTorch ConvTranspose2d(k3, s2, padding=1, output_padding=1); w: (in, out, kh, kw)."""
  h, wd, _ = x.shape
  full = np.zeros((2 * h + 2, 2 * wd + 2, w.shape[1]))
  for a in range(3):
    for c in range(3):
      full[a:a + 2 * h:2, c:c + 2 * wd:2] += np.einsum("hwi,io->hwo", x, w[:, :, a, c])
  return full[1:2 * h + 1, 1:2 * wd + 1] + b


def np_reflect(x, p):
  return np.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect")


def np_instance_norm(x):
  return (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5)


def np_generator(x, sd, n_blocks):
  relu = lambda v: np.maximum(v, 0)
  x = relu(np_instance_norm(np_conv(np_reflect(x, 3), *sd["model.1"])))
  x = relu(np_instance_norm(np_conv(x, *sd["model.4"], stride=2, pad=1)))
  x = relu(np_instance_norm(np_conv(x, *sd["model.7"], stride=2, pad=1)))
  for i in range(n_blocks):
    y = relu(np_instance_norm(np_conv(np_reflect(x, 1), *sd[f"model.{10 + i}.conv_block.1"])))
    x = x + np_instance_norm(np_conv(np_reflect(y, 1), *sd[f"model.{10 + i}.conv_block.5"]))
  x = relu(np_instance_norm(np_conv_transpose(x, *sd[f"model.{10 + n_blocks}"])))
  x = relu(np_instance_norm(np_conv_transpose(x, *sd[f"model.{13 + n_blocks}"])))
  return np.tanh(np_conv(np_reflect(x, 3), *sd[f"model.{17 + n_blocks}"]))


def np_discriminator(x, sd, n_layers):
  lrelu = lambda v: np.where(v > 0, v, 0.2 * v)
  x = lrelu(np_conv(x, *sd["model.0"], stride=2, pad=1))
  for i in range(1, n_layers + 1):
    x = np_conv(x, *sd[f"model.{2 + 3 * (i - 1)}"], stride=2 if i < n_layers else 1, pad=1)
    x = lrelu(np_instance_norm(x))
  return np_conv(x, *sd[f"model.{2 + 3 * n_layers}"], pad=1)


# --- PyTorch state-dict names -> our layer names ---

def generator_layers(n_blocks):
  names = {"model.1": "stem_conv", "model.4": "down0_conv", "model.7": "down1_conv",
           f"model.{10 + n_blocks}": "up0_deconv", f"model.{13 + n_blocks}": "up1_deconv",
           f"model.{17 + n_blocks}": "head_conv"}
  for i in range(n_blocks):
    names[f"model.{10 + i}.conv_block.1"] = f"block{i}_conv1"
    names[f"model.{10 + i}.conv_block.5"] = f"block{i}_conv2"
  return names


def discriminator_layers(n_layers):
  names = {"model.0": "layer0_conv", f"model.{2 + 3 * n_layers}": "head_conv"}
  for i in range(1, n_layers + 1):
    names[f"model.{2 + 3 * (i - 1)}"] = f"layer{i}_conv"
  return names


def random_state_dict(model, layer_names, rng):
  """Random weights in PyTorch layout, also loaded into `model` (kernel = w.transpose(2,3,1,0))."""
  sd = {}
  for key, name in layer_names.items():
    layer = model.get_layer(name)
    kernel = layer.kernel.shape  # (kh, kw, in, out) for conv, (kh, kw, out, in) for transposed
    w = rng.normal(0, 0.3, (kernel[3], kernel[2], kernel[0], kernel[1]))
    b = rng.normal(0, 0.3, (layer.bias.shape[0],))
    layer.kernel.assign(w.transpose(2, 3, 1, 0).astype(np.float32))
    layer.bias.assign(b.astype(np.float32))
    sd[key] = (w, b)
  return sd


def test_parameter_counts_at_full_size():
  assert models.resnet_generator(64, 9).count_params() == 11_378_179
  assert models.resnet_generator(64, 6).count_params() == 7_837_699
  assert models.patch_discriminator(64, 3).count_params() == 2_764_737


@pytest.mark.parametrize("training", [False, True])  # reflect padding differs (concat, MirrorPad)
@pytest.mark.parametrize("height,width", [(32, 32), (36, 20)])
def test_generator_matches_numpy_reference(height, width, training):
  rng = np.random.default_rng(0)
  model = models.resnet_generator(ngf=4, n_blocks=2)
  sd = random_state_dict(model, generator_layers(2), rng)
  x = rng.uniform(-1, 1, (height, width, 3))
  got = model(x[None].astype(np.float32), training=training).numpy()[0]
  np.testing.assert_allclose(got, np_generator(x, sd, 2), atol=2e-5)


@pytest.mark.parametrize("n_layers,size", [(3, 64), (2, 45)])
def test_discriminator_matches_numpy_reference(n_layers, size):
  rng = np.random.default_rng(1)
  model = models.patch_discriminator(ndf=4, n_layers=n_layers)
  sd = random_state_dict(model, discriminator_layers(n_layers), rng)
  x = rng.uniform(-1, 1, (size, size, 3))
  got = model(x[None].astype(np.float32)).numpy()[0]
  want = np_discriminator(x, sd, n_layers)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_cropping_matches_keras_forward_and_gradient():
  import keras
  import tensorflow as tf
  x = tf.random.normal([2, 9, 7, 3])
  for cropping in [((1, 0), (1, 0)), ((1, 2), (0, 1))]:  # the generator's; Keras's own path
    results = []
    for layer in (models.Cropping2D(cropping), keras.layers.Cropping2D(cropping)):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.reshape(tf.range(tf.size(y), dtype=tf.float32), y.shape))
      results.append((y.numpy(), tape.gradient(loss, x).numpy()))
    for ours, keras_result in zip(*results):
      np.testing.assert_array_equal(ours, keras_result)


def test_patchgan_gives_30x30_logits_for_256_input():
  model = models.patch_discriminator(ndf=4)
  assert model(np.zeros((1, 256, 256, 3), np.float32)).shape == (1, 30, 30, 1)


def test_generator_is_fully_convolutional():
  model = models.resnet_generator(ngf=4, n_blocks=1)
  for shape in [(2, 8, 8, 3), (1, 52, 68, 3), (1, 100, 4 * 9, 3)]:
    out = model(np.zeros(shape, np.float32))
    assert out.shape == shape


def test_init_is_normal_0_002_with_zero_bias():
  model = models.resnet_generator(ngf=64, n_blocks=1)
  kernel = model.get_layer("block0_conv1").kernel.numpy()
  assert abs(kernel.mean()) < 1e-3 and abs(kernel.std() - 0.02) < 1e-3
  assert not model.get_layer("block0_conv1").bias.numpy().any()


def test_every_layer_draws_its_own_init_from_the_seed():
  """One shared Keras initializer would give every layer of a shape the same weights (and a
  seed taken from Python's `random` at import, so no --seed would make a run repeatable)."""
  import keras
  def build():
    keras.utils.set_random_seed(3)
    return models.resnet_generator(ngf=4, n_blocks=2), models.resnet_generator(ngf=4, n_blocks=2)
  first, second = build()
  kernel = lambda model, name: model.get_layer(name).kernel.numpy()
  assert not np.array_equal(kernel(first, "block0_conv1"), kernel(first, "block1_conv1"))
  assert not np.array_equal(kernel(first, "stem_conv"), kernel(second, "stem_conv"))
  again, _ = build()
  for a, b in zip(first.get_weights(), again.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_mixed_precision_keeps_float32_outputs():
  gen = models.resnet_generator(ngf=4, n_blocks=1, dtype="mixed_bfloat16")
  disc = models.patch_discriminator(ndf=4, dtype="mixed_bfloat16")
  x = np.zeros((1, 32, 32, 3), np.float32)
  assert gen(x).dtype == "float32" and disc(x).dtype == "float32"
  assert gen.get_layer("stem_conv").compute_dtype == "bfloat16"
  assert gen.get_layer("stem_conv").kernel.dtype == "float32"
