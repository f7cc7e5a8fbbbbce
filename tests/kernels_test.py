"""The CPU routes of cyclegan/kernels/: each gives the plain convolution's numbers, is taken
where it should be, and the whole routed generator and discriminator equal the plain ones at
full width."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cyclegan import kernels
from cyclegan import models
from cyclegan.kernels import blocks
from cyclegan.kernels import filter_gradient
from cyclegan.kernels import row_winograd
from cyclegan.kernels import winograd


def traced_ops(run, x):
  """The op types of tf.function `run` traced for `x`, its function library's included."""
  graph = run.get_concrete_function(x).graph.as_graph_def()
  return [node.op for node in graph.node] + [
      node.op for function in graph.library.function for node in function.node_def]


def test_biases_before_instance_norms_are_left_out_only_outside_training():
  """An instance norm subtracts each channel's mean, so the bias of a convolution feeding it
  changes nothing: inference leaves it out (the numpy references add it, with random biases),
  training keeps it for its gradient, as the reference."""
  x = tf.zeros([1, 32, 32, 3])
  def bias_adds(model, training):
    return traced_ops(tf.function(lambda x: model(x, training=training)), x).count("BiasAdd")
  generator = models.resnet_generator(ngf=4, n_blocks=2)
  assert (bias_adds(generator, False), bias_adds(generator, True)) == (1, 10)  # head / all
  discriminator = models.patch_discriminator(ndf=4, n_layers=3)
  assert (bias_adds(discriminator, False), bias_adds(discriminator, True)) == (2, 5)


def _forward_backward(layer, x, training):
  """The layer's output and gradients (input, kernel, bias), and the filter-gradient ops
  its traced gradient runs."""

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
  assert filter_gradient.gemm_applies(models.conv(128, 3, strides=2), big)
  assert not filter_gradient.gemm_applies(models.conv(128, 3, strides=2), (130, 130, 64))
  assert not filter_gradient.gemm_applies(models.conv(128, 3, strides=2), (514, 514, 32))
  assert not filter_gradient.gemm_applies(models.conv(128, 3, strides=1), big)
  assert not filter_gradient.gemm_applies(models.conv(128, 4, strides=2), big)
  assert not filter_gradient.gemm_applies(models.conv(128, 3, strides=2, dtype="mixed_bfloat16"),
                                         big)
  assert not filter_gradient.gemm_applies(models.conv(128, 3, strides=2), (None, None, 64))
  same = models.Conv2D(128, 3, strides=2, padding="same")
  assert not filter_gradient.gemm_applies(same, big)


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
  filter gradient as matmuls, not oneDNN's kernel; the same numbers up to bf16 rounding
  (float32 adds Winograd: test_winograd_trains_with_the_same_gradients)."""
  layer = make_layer()
  x = tf.random.stateless_normal(shape, seed=[0, 3])
  with kernels.off():
    plain, ops = _forward_backward(layer, x, training=True)
    assert len(ops) == 1
  taps, ops = _forward_backward(layer, x, training=True)
  assert not ops
  # Output, input and filter gradients; the bias gradient is BiasAddGrad's either way (a sum in
  # bf16 whose order varies between graphs).
  for want, got in zip(plain[:3], taps[:3]):
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=1e-2 * np.abs(want).max())


def test_matmul_filter_gradient_routes_only_layers_it_speeds_up():
  layer = models.conv(128, 3, dtype="mixed_bfloat16")
  assert filter_gradient.matmul_applies(layer, (18, 18, 128))
  assert not filter_gradient.matmul_applies(layer, (18, 18, 64))
  assert not filter_gradient.matmul_applies(layer, (None, None, 128))
  assert filter_gradient.matmul_applies(models.conv(128, 3), (18, 18, 128))  # float32
  assert not filter_gradient.matmul_applies(models.conv(128, 3, strides=2), (18, 18, 128))
  assert not filter_gradient.matmul_applies(models.conv(64, 3, dtype="mixed_bfloat16"),
                                           (18, 18, 128))
  strided = models.conv(64, 4, strides=2, dtype="mixed_bfloat16")
  assert filter_gradient.matmul_applies(strided, (130, 130, 64))
  assert not filter_gradient.matmul_applies(strided, (258, 258, 3))  # the PatchGAN's first


@pytest.mark.parametrize("shape,known", [((2, 14, 14, 8), True), ((1, 13, 15, 8), True),
                                         ((1, 16, 12, 5), False)])
def test_head_on_2x2_blocks_gives_the_same_numbers(shape, known):
  """The 7x7 three-filter head by space_to_depth: the plain convolution's output and
  gradients, at even and odd sizes known when traced, and at sizes traced as unknown."""
  layer = models.conv(3, 7)
  assert blocks.applies(layer) and not blocks.applies(models.conv(64, 7))
  assert not blocks.applies(models.conv(3, 3))
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

  on_blocks, ops = forward_backward(lambda x: layer(x, training=True))
  assert "SpaceToDepth" in ops
  plain, _ = forward_backward(
      lambda x: tf.nn.bias_add(tf.nn.conv2d(x, layer.kernel, 1, "VALID"), layer.bias))
  for want, got in zip(plain, on_blocks):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape,known", [((2, 38, 38, 256), True), ((1, 37, 43, 256), True),
                                         ((1, 35, 50, 256), False)])
def test_winograd_gives_the_same_numbers(shape, known):
  """Inference's float32 route for the residual convolutions: the plain convolution's output
  up to float32 rounding, at sizes that are and are not whole tiles, known or not."""
  layer = models.conv(256, 3)
  layer.build(shape)
  x = tf.random.stateless_normal(shape, seed=[0, 5])
  signature = None if known else [tf.TensorSpec([None, None, None, shape[3]])]
  run = tf.function(lambda x: layer(x, training=False), input_signature=signature)
  ops = traced_ops(run, x)
  assert "BatchMatMulV2" in ops and "Conv2D" not in ops
  got = run(x).numpy()
  want = tf.nn.bias_add(tf.nn.conv2d(x, layer.kernel, 1, "VALID"), layer.bias).numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_winograd_routes_only_wide_float32_layers_outside_converters():
  layer = models.conv(256, 3)
  assert winograd.applies(layer, (130, 130, 256))
  assert winograd.applies(layer, (None, None, 256))
  assert winograd.applies(models.conv(128, 3), (18, 18, 128))
  assert not winograd.applies(layer, (10, 130, 256))  # a known small side: oneDNN is faster
  assert not winograd.applies(layer, (130, 130, 64))
  assert not winograd.applies(models.conv(64, 3), (130, 130, 256))
  assert not winograd.applies(models.conv(256, 3, dtype="mixed_bfloat16"), (130, 130, 256))
  assert not winograd.applies(models.conv(256, 3, strides=2), (130, 130, 256))
  with kernels.off():
    assert not winograd.applies(layer, (130, 130, 256))
  assert winograd.applies(layer, (130, 130, 256))


def test_winograd_trains_with_the_same_gradients():
  """In float32 training the residual convolutions' output and input gradient go by Winograd
  too (their filter gradient by taps): the plain convolution's numbers up to rounding."""
  layer = models.conv(256, 3)
  x = tf.random.stateless_normal((1, 36, 38, 256), seed=[0, 6])
  with kernels.off():
    plain, _ = _forward_backward(layer, x, training=True)
  routed, ops = _forward_backward(layer, x, training=True)
  assert not ops and np.abs(routed[0] - plain[0]).max() > 0  # another route
  for want, got in zip(plain, routed):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_winograd_transforms_each_kernel_once_per_graph():
  """A training step runs each generator three times: within one graph each kernel is
  transformed once, and once turned round for the input gradients, and the gradients are the
  plain convolution's, summed over the passes."""
  layer = models.conv(256, 3)
  xs = [tf.random.stateless_normal((1, 22, 26, 256), seed=[0, i]) for i in (7, 8)]

  def forward_backward(xs):
    with tf.GradientTape() as tape:
      tape.watch(xs)
      loss = sum(tf.reduce_sum(y * tf.sin(y)) for y in (layer(x, training=True) for x in xs))
    return tape.gradient(loss, [*xs, layer.kernel, layer.bias])

  routed = tf.function(forward_backward)
  transforms = [op for op in routed.get_concrete_function(xs).graph.get_operations()
                if op.type == "MatMul" and op.name.startswith("winograd_kernels/")]
  assert len(transforms) == 2
  got = [t.numpy() for t in routed(xs)]
  with kernels.off():
    want = [t.numpy() for t in tf.function(forward_backward)(xs)]
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * np.abs(w).max())


@pytest.mark.parametrize("shape,known", [((2, 68, 70, 128), True), ((1, 67, 71, 128), True),
                                         ((3, 69, 66, 128), False)])
def test_row_winograd_gives_bf16_numbers(shape, known):
  """Inference's bf16 route for the residual convolutions, at even and odd heights, known or
  not: four 1x3 convolutions, within a few times the direct bf16 convolution's rounding
  (measured 2.5x its rms difference from float64 on the same bf16 inputs)."""
  layer = models.conv(128, 3, dtype="mixed_bfloat16", instance_normalized=True)
  layer.build(shape)
  layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[0, 9]) * 0.05)
  x = tf.cast(tf.nn.relu(tf.random.stateless_normal(shape, seed=[0, 10])), tf.bfloat16)
  signature = None if known else [tf.TensorSpec([None, None, None, shape[3]], tf.bfloat16)]
  run = tf.function(lambda x: layer(x, training=False), input_signature=signature)
  assert traced_ops(run, x).count("Conv2D") == 4
  got = run(x).numpy().astype(np.float64)
  kernel = tf.cast(layer.kernel, tf.bfloat16)
  exact = tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(kernel, tf.float64), 1, "VALID").numpy()
  direct = tf.nn.conv2d(x, kernel, 1, "VALID").numpy().astype(np.float64)
  assert got.shape == exact.shape
  rms = lambda a: np.sqrt(np.mean(a ** 2))
  assert rms(got - exact) < 4 * rms(direct - exact) and rms(got - exact) < 0.01 * rms(exact)


def test_row_winograd_routes_only_wide_bf16_layers_outside_training_and_converters():
  layer = models.conv(256, 3, dtype="mixed_bfloat16")
  assert row_winograd.applies(layer, (130, 130, 256), training=False)
  assert row_winograd.applies(layer, (None, None, 256), training=None)
  assert not row_winograd.applies(layer, (130, 130, 256), training=True)
  assert not row_winograd.applies(layer, (34, 130, 256), training=False)  # oneDNN is as fast
  assert not row_winograd.applies(models.conv(64, 3, dtype="mixed_bfloat16"), (130, 130, 64),
                                 training=False)
  assert not row_winograd.applies(models.conv(256, 3), (130, 130, 256), training=False)
  assert not row_winograd.applies(models.conv(256, 3, strides=2, dtype="mixed_bfloat16"),
                                 (130, 130, 256), training=False)
  with kernels.off():
    assert not row_winograd.applies(layer, (130, 130, 256), training=False)


# --- The whole networks at full width ------------------------------------------------------

def _trained_weights(networks):
  """Every weight with a gradient to compare: not the biases that feed instance norms, whose
  gradient is zero but for rounding (the norm subtracts them again)."""
  return [w for network in networks for layer in network.layers for w in layer.trainable_weights
          if not (getattr(layer, "instance_normalized", False) and w is layer.bias)]


def _full_width_results(networks, image, train_image):
  """The generator's forward pass on `image`, and one training step of generator and
  discriminator on `train_image` (LSGAN + 10 x L1, as a CycleGAN's generator loss): the
  loss, the fake and every weight's gradient; plus the op types, function names and
  convolution paddings both graphs traced."""
  generator, discriminator = networks
  weights = _trained_weights(networks)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      fake = generator(x, training=True)
      loss = (tf.reduce_mean(tf.square(discriminator(fake, training=True) - 1)) +
              10 * tf.reduce_mean(tf.abs(fake - x)))
    return [loss, fake, *tape.gradient(loss, weights)]

  forward = tf.function(lambda x: generator(x, training=False))
  ops = set()
  for run, x in ((step, train_image), (forward, image)):
    graph = run.get_concrete_function(x).graph.as_graph_def()
    ops |= set(traced_ops(run, x)) | {f.signature.name for f in graph.library.function}
    nodes = [*graph.node, *(node for f in graph.library.function for node in f.node_def)]
    ops |= {node.attr["padding"].s.decode() for node in nodes if node.op.startswith("Conv2D")}
  results = [forward(image), *step(train_image)]
  return [t.numpy().astype(np.float64) for t in results], ops


@pytest.fixture(scope="module")
def full_width_networks():
  """ngf 64, 9 blocks and the 70x70 PatchGAN in fp32 and bf16, with the same weights."""
  keras.utils.set_random_seed(0)
  networks = {}
  for precision in ("fp32", "bf16"):
    dtype = models.POLICIES[precision]
    networks[precision] = (models.resnet_generator(64, 9, dtype=dtype),
                           models.patch_discriminator(64, 3, dtype=dtype))
  for bf16, fp32 in zip(networks["bf16"], networks["fp32"]):
    bf16.set_weights(fp32.get_weights())
  return networks


# Images at which every route is taken: inference at 256 px (row Winograd needs residual
# inputs of side 66+), training at 184 px (the GEMM filter gradient needs 2M+ values in down0's
# input and up1's output: 186^2 x 64 and 185^2 x 64).
_IMAGE = tf.random.stateless_uniform([1, 256, 256, 3], [0, 11], -1, 1)
_TRAIN_IMAGE = tf.random.stateless_uniform([1, 184, 184, 3], [0, 12], -1, 1)
# What only the routes trace, by precision: op types, functions, the GEMM route's padding.
_ROUTE_OPS = {"fp32": ("SpaceToDepth", "conv_by_winograd", "filter_gradient_by_taps", "EXPLICIT"),
              "bf16": ("SpaceToDepth", "conv_by_row_winograd", "filter_gradient_by_taps")}


def _traced(ops, names):
  """The names (an op type, padding, or part of a function's name) found among `ops`."""
  return {name for name in names if any(name in op for op in ops)}


def _relative_rms(got, want, scale):
  return np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(scale ** 2))


@pytest.fixture(scope="module")
def plain_fp32(full_width_networks):
  """The fp32 results by oneDNN's convolutions alone."""
  with kernels.off():
    return _full_width_results(full_width_networks["fp32"], _IMAGE, _TRAIN_IMAGE)[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_routed_full_width_networks_equal_plain_convolutions(full_width_networks, plain_fp32,
                                                            precision):
  """The forward pass and a training step of the full-width networks, routed (auto) and by
  oneDNN's convolutions alone (off), give the same numbers in each precision.

  fp32: the routes reassociate float32 sums (Winograd's transforms: 3.8e-6 of a layer's
  largest output), so the forward pass, loss and fake stay within 1e-4 of their size (rms;
  measured <= 1e-5). The gradients of a step at N(0, 0.02) init are ill-conditioned: moving
  the training image by 1e-6 of itself moves them by 0.1-0.7% rms, and the routes by as much
  (measured up to 0.6%), so they may move by 2% of their size.
  bf16: the routes round differently than the direct kernels (row Winograd rounds its
  transformed rows and four products to bf16), so the bar is bf16's own error: routed and
  plain bf16 may differ by at most 3x as much as plain bf16 differs from fp32, on every
  tensor (measured 1.2x), and the forward pass's largest difference in grey levels may be
  at most 2x plain bf16's largest from fp32.
  A transform that is wrong by a sign or a point misses these bars by orders of magnitude.
  """
  networks = full_width_networks[precision]
  routed, ops = _full_width_results(networks, _IMAGE, _TRAIN_IMAGE)
  assert _traced(ops, _ROUTE_OPS[precision]) == set(_ROUTE_OPS[precision])  # routes taken
  with kernels.off():
    plain, plain_ops = _full_width_results(networks, _IMAGE, _TRAIN_IMAGE)
  assert not _traced(plain_ops, _ROUTE_OPS[precision])
  fp32 = plain_fp32
  if precision == "fp32":
    errors = [_relative_rms(got, want, want) for got, want in zip(routed, plain)]
    print(f"fp32: outputs {max(errors[:3]):.2g}, gradients {max(errors[3:]):.2g} relative rms")
    assert max(errors[:3]) < 1e-4 and max(errors[3:]) < 2e-2
    return
  ratios = [_relative_rms(got, want, exact) / _relative_rms(want, exact, exact)
            for got, want, exact in zip(routed, plain, fp32)]
  levels = np.abs(routed[0] - plain[0]).max() * 127.5
  bf16_levels = np.abs(plain[0] - fp32[0]).max() * 127.5
  print(f"bf16: {max(ratios):.2f}x bf16's own error; forward at most {levels:.1f} grey levels "
        f"from plain bf16, which is at most {bf16_levels:.1f} from fp32")
  assert max(ratios) <= 3 and levels <= 2 * bf16_levels


def test_configure_switches_every_route_process_wide():
  """`--cpu_kernels off` (configure) traces oneDNN's convolutions alone until switched back."""
  layer = models.conv(3, 7)
  layer.build((1, 16, 16, 8))
  assert blocks.applies(layer)
  kernels.configure("off")
  try:
    assert not blocks.applies(layer) and not kernels.bias_cancelled(
        models.conv(8, 3, instance_normalized=True), training=False)
  finally:
    kernels.configure("auto")
  assert blocks.applies(layer)
  with pytest.raises(ValueError, match="cpu_kernels"):
    kernels.configure("on")
