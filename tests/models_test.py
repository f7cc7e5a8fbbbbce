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


def _traced_ops(run, x):
  """The op types of tf.function `run` traced for `x`, its function library's included."""
  graph = run.get_concrete_function(x).graph.as_graph_def()
  return [node.op for node in graph.node] + [
      node.op for function in graph.library.function for node in function.node_def]


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


def test_biases_before_instance_norms_are_left_out_only_outside_training():
  """An instance norm subtracts each channel's mean, so the bias of a convolution feeding it
  changes nothing: inference leaves it out (the numpy references add it, with random biases),
  training keeps it for its gradient, as the reference."""
  import tensorflow as tf
  x = tf.zeros([1, 32, 32, 3])
  def bias_adds(model, training):
    return _traced_ops(tf.function(lambda x: model(x, training=training)), x).count("BiasAdd")
  generator = models.resnet_generator(ngf=4, n_blocks=2)
  assert (bias_adds(generator, False), bias_adds(generator, True)) == (1, 10)  # head / all
  discriminator = models.patch_discriminator(ndf=4, n_layers=3)
  assert (bias_adds(discriminator, False), bias_adds(discriminator, True)) == (2, 5)


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


def _forward_backward(layer, x, training):
  """The layer's output and gradients (input, kernel, bias), and the filter-gradient ops
  its traced gradient runs."""
  import tensorflow as tf

  @tf.function
  def forward_backward(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=training)
      loss = tf.reduce_sum(y * tf.sin(y))
    return (y, *tape.gradient(loss, [x, layer.kernel, layer.bias]))

  graph = forward_backward.get_concrete_function(x).graph
  filter_gradients = [op for op in graph.get_operations() if op.type == "Conv2DBackpropFilter"]
  return [t.numpy() for t in forward_backward(x)], filter_gradients


@pytest.mark.parametrize("make_layer,shape", [
    (lambda: models.conv(64, 3, strides=2), (1, 182, 182, 64)),  # 2.1M values: down0 at ~180 px
    (lambda: models.Conv2DTranspose(64, 3, strides=2, padding="valid"), (1, 91, 91, 128)),
])
def test_gemm_filter_gradient_gives_the_same_numbers(make_layer, shape):
  """Training's float32 route for the big stride-2 layers: same outputs and gradients as
  the oneDNN route inference takes, and it is the route the traced gradient takes."""
  import tensorflow as tf
  layer = make_layer()
  x = tf.random.stateless_normal(shape, seed=[0, 1])
  plain, ops = _forward_backward(layer, x, training=False)
  assert {op.get_attr("padding") for op in ops} == {b"VALID"}
  gemm, ops = _forward_backward(layer, x, training=True)
  assert {op.get_attr("padding") for op in ops} == {b"EXPLICIT"}
  for want, got in zip(plain, gemm):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_filter_gradient_routes_only_for_big_float32_layers():
  big = (258, 258, 64)  # down0's input at 256 px
  assert models.gemm_filter_gradient(models.conv(128, 3, strides=2), big)
  assert not models.gemm_filter_gradient(models.conv(128, 3, strides=2), (130, 130, 64))
  assert not models.gemm_filter_gradient(models.conv(128, 3, strides=2), (514, 514, 32))
  assert not models.gemm_filter_gradient(models.conv(128, 3, strides=1), big)
  assert not models.gemm_filter_gradient(models.conv(128, 4, strides=2), big)
  assert not models.gemm_filter_gradient(models.conv(128, 3, strides=2, dtype="mixed_bfloat16"),
                                         big)
  assert not models.gemm_filter_gradient(models.conv(128, 3, strides=2), (None, None, 64))
  same = models.Conv2D(128, 3, strides=2, padding="same")
  assert not models.gemm_filter_gradient(same, big)


@pytest.mark.parametrize("make_layer,shape", [
    (lambda: models.conv(128, 3), (1, 18, 18, 128)),  # residual, float32
    (lambda: models.conv(128, 3, dtype="mixed_bfloat16"), (1, 18, 18, 128)),  # residual
    (lambda: models.conv(128, 3, strides=2, dtype="mixed_bfloat16"), (1, 35, 35, 64)),  # down
    (lambda: models.conv(128, 4, strides=2, dtype="mixed_bfloat16"), (1, 34, 34, 64)),  # PatchGAN
    (lambda: models.Conv2DTranspose(64, 3, strides=2, padding="valid", dtype="mixed_bfloat16"),
     (1, 17, 17, 128)),  # up
])
def test_matmul_filter_gradient_gives_the_same_numbers(make_layer, shape):
  """Training's route for stride-1 convolutions of 128+ channels and bf16 stride-2 ones: the
  filter gradient as matmuls, not oneDNN's kernel; the same numbers up to bf16 rounding.
  Without Winograd, which float32 adds to it (test_winograd_trains_with_the_same_gradients)."""
  import tensorflow as tf
  layer = make_layer()
  x = tf.random.stateless_normal(shape, seed=[0, 3])
  with models.without_winograd():
    plain, ops = _forward_backward(layer, x, training=False)
    assert len(ops) == 1
    taps, ops = _forward_backward(layer, x, training=True)
    assert not ops
  # Output, input and filter gradients; the bias gradient is BiasAddGrad's either way (a sum in
  # bf16 whose order varies between graphs).
  for want, got in zip(plain[:3], taps[:3]):
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=1e-2 * np.abs(want).max())


def test_matmul_filter_gradient_routes_only_layers_it_speeds_up():
  layer = models.conv(128, 3, dtype="mixed_bfloat16")
  assert models.matmul_filter_gradient(layer, (18, 18, 128))
  assert not models.matmul_filter_gradient(layer, (18, 18, 64))
  assert not models.matmul_filter_gradient(layer, (None, None, 128))
  assert models.matmul_filter_gradient(models.conv(128, 3), (18, 18, 128))  # float32
  assert not models.matmul_filter_gradient(models.conv(128, 3, strides=2), (18, 18, 128))
  assert not models.matmul_filter_gradient(models.conv(64, 3, dtype="mixed_bfloat16"),
                                           (18, 18, 128))
  strided = models.conv(64, 4, strides=2, dtype="mixed_bfloat16")
  assert models.matmul_filter_gradient(strided, (130, 130, 64))
  assert not models.matmul_filter_gradient(strided, (258, 258, 3))  # the PatchGAN's first


@pytest.mark.parametrize("shape,known", [((2, 14, 14, 8), True), ((1, 13, 15, 8), True),
                                         ((1, 16, 12, 5), False)])
def test_head_on_2x2_blocks_gives_the_same_numbers(shape, known):
  """The 7x7 three-filter head by space_to_depth: the plain convolution's output and
  gradients, at even and odd sizes known when traced, and at sizes traced as unknown."""
  import tensorflow as tf
  layer = models.conv(3, 7)
  assert models.on_2x2_blocks(layer) and not models.on_2x2_blocks(models.conv(64, 7))
  assert not models.on_2x2_blocks(models.conv(3, 3))
  x = tf.random.stateless_normal(shape, seed=[0, 4])
  layer.build(shape)
  signature = None if known else [tf.TensorSpec([None, None, None, shape[3]])]

  def forward_backward(convolve):
    @tf.function(input_signature=signature)
    def run(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = convolve(x)
        loss = tf.reduce_sum(y * tf.sin(y))
      return (y, *tape.gradient(loss, [x, layer.kernel, layer.bias]))
    ops = {op.type for op in run.get_concrete_function(x).graph.get_operations()}
    return [t.numpy() for t in run(x)], ops

  blocks, ops = forward_backward(lambda x: layer(x, training=True))
  assert "SpaceToDepth" in ops
  plain, _ = forward_backward(
      lambda x: tf.nn.bias_add(tf.nn.conv2d(x, layer.kernel, 1, "VALID"), layer.bias))
  for want, got in zip(plain, blocks):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape,known", [((2, 38, 38, 256), True), ((1, 37, 43, 256), True),
                                         ((1, 35, 50, 256), False)])
def test_winograd_gives_the_same_numbers(shape, known):
  """Inference's float32 route for the residual convolutions: the plain convolution's output
  up to float32 rounding, at sizes that are and are not whole tiles, known or not."""
  import tensorflow as tf
  layer = models.conv(256, 3)
  layer.build(shape)
  x = tf.random.stateless_normal(shape, seed=[0, 5])
  signature = None if known else [tf.TensorSpec([None, None, None, shape[3]])]
  run = tf.function(lambda x: layer(x, training=False), input_signature=signature)
  ops = _traced_ops(run, x)
  assert "BatchMatMulV2" in ops and "Conv2D" not in ops
  got = run(x).numpy()
  want = tf.nn.bias_add(tf.nn.conv2d(x, layer.kernel, 1, "VALID"), layer.bias).numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_winograd_routes_only_wide_float32_layers_outside_converters():
  layer = models.conv(256, 3)
  assert models.winograd(layer, (130, 130, 256))
  assert models.winograd(layer, (None, None, 256))
  assert models.winograd(models.conv(128, 3), (18, 18, 128))
  assert not models.winograd(layer, (10, 130, 256))  # a known small side: oneDNN is faster
  assert not models.winograd(layer, (130, 130, 64))
  assert not models.winograd(models.conv(64, 3), (130, 130, 256))
  assert not models.winograd(models.conv(256, 3, dtype="mixed_bfloat16"), (130, 130, 256))
  assert not models.winograd(models.conv(256, 3, strides=2), (130, 130, 256))
  with models.without_winograd():
    assert not models.winograd(layer, (130, 130, 256))
  assert models.winograd(layer, (130, 130, 256))


def test_winograd_trains_with_the_same_gradients():
  """In float32 training the residual convolutions' output and input gradient go by Winograd
  too (their filter gradient by taps): the plain convolution's numbers up to rounding."""
  import tensorflow as tf
  layer = models.conv(256, 3)
  x = tf.random.stateless_normal((1, 36, 38, 256), seed=[0, 6])
  with models.without_winograd():  # inference would take Winograd too
    plain, _ = _forward_backward(layer, x, training=False)
    taps, _ = _forward_backward(layer, x, training=True)
  winograd, _ = _forward_backward(layer, x, training=True)
  assert np.abs(winograd[0] - taps[0]).max() > 0  # another route, not the same kernels
  for want, got in zip(plain, winograd):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_winograd_transforms_each_kernel_once_per_graph():
  """A training step runs each generator three times: within one graph each kernel is
  transformed once, and once turned round for the input gradients, and the gradients are the
  plain convolution's, summed over the passes."""
  import tensorflow as tf
  layer = models.conv(256, 3)
  xs = [tf.random.stateless_normal((1, 22, 26, 256), seed=[0, i]) for i in (7, 8)]

  def forward_backward(xs):
    with tf.GradientTape() as tape:
      tape.watch(xs)
      loss = sum(tf.reduce_sum(y * tf.sin(y)) for y in (layer(x, training=True) for x in xs))
    return tape.gradient(loss, [*xs, layer.kernel, layer.bias])

  winograd = tf.function(forward_backward)
  transforms = [op for op in winograd.get_concrete_function(xs).graph.get_operations()
                if op.type == "MatMul" and op.name.startswith("winograd_kernels/")]
  assert len(transforms) == 2
  got = [t.numpy() for t in winograd(xs)]
  with models.without_winograd():
    want = [t.numpy() for t in tf.function(forward_backward)(xs)]
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * np.abs(w).max())


@pytest.mark.parametrize("shape,known", [((2, 68, 70, 128), True), ((1, 67, 71, 128), True),
                                         ((3, 69, 66, 128), False)])
def test_row_winograd_gives_bf16_numbers(shape, known):
  """Inference's bf16 route for the residual convolutions, at even and odd heights, known or
  not: four 1x3 convolutions, within a few times the direct bf16 convolution's rounding
  (measured 2.5x its rms difference from float64 on the same bf16 inputs)."""
  import tensorflow as tf
  layer = models.conv(128, 3, dtype="mixed_bfloat16", instance_normalized=True)
  layer.build(shape)
  layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[0, 9]) * 0.05)
  x = tf.cast(tf.nn.relu(tf.random.stateless_normal(shape, seed=[0, 10])), tf.bfloat16)
  signature = None if known else [tf.TensorSpec([None, None, None, shape[3]], tf.bfloat16)]
  run = tf.function(lambda x: layer(x, training=False), input_signature=signature)
  assert _traced_ops(run, x).count("Conv2D") == 4
  got = run(x).numpy().astype(np.float64)
  kernel = tf.cast(layer.kernel, tf.bfloat16)
  exact = tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(kernel, tf.float64), 1, "VALID").numpy()
  direct = tf.nn.conv2d(x, kernel, 1, "VALID").numpy().astype(np.float64)
  assert got.shape == exact.shape
  rms = lambda a: np.sqrt(np.mean(a ** 2))
  assert rms(got - exact) < 4 * rms(direct - exact) and rms(got - exact) < 0.01 * rms(exact)


def test_row_winograd_routes_only_wide_bf16_layers_outside_training_and_converters():
  layer = models.conv(256, 3, dtype="mixed_bfloat16")
  assert models.row_winograd(layer, (130, 130, 256), training=False)
  assert models.row_winograd(layer, (None, None, 256), training=None)
  assert not models.row_winograd(layer, (130, 130, 256), training=True)
  assert not models.row_winograd(layer, (34, 130, 256), training=False)  # oneDNN is as fast
  assert not models.row_winograd(models.conv(64, 3, dtype="mixed_bfloat16"), (130, 130, 64),
                                 training=False)
  assert not models.row_winograd(models.conv(256, 3), (130, 130, 256), training=False)
  assert not models.row_winograd(models.conv(256, 3, strides=2, dtype="mixed_bfloat16"),
                                 (130, 130, 256), training=False)
  with models.without_winograd():
    assert not models.row_winograd(layer, (130, 130, 256), training=False)
