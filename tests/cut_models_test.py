"""CUT's networks against a PyTorch re-implementation of its authors' layers, same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_tool, photo

from cyclegan import cut_models

torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")
torch_reference = load_tool("torch_reference")


def copy_convolutions(torch_net, model):
  """PyTorch's convolution weights into ours, in forward order (both list them so)."""
  theirs = [m for m in torch_net.modules() if isinstance(m, torch.nn.Conv2d)]
  ours = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert len(theirs) == len(ours)
  for conv, layer in zip(theirs, ours):
    layer.kernel.assign(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    layer.bias.assign(conv.bias.detach().numpy())


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _image(height, width, seed=0):
  return photo(height, width, seed).astype(np.float32)[None] / 127.5 - 1


def test_generator_and_its_nce_features_equal_the_authors():
  """Forward pass and the five PatchNCE features (0: padded input, 4 and 8: the down
  convolutions' raw outputs, 12 and 16: residual blocks 1 and 5) at a non-square size.
  fp32 against fp32: 1e-5 is rounding over ~20 layers; the blur layers off by one pixel of
  phase, or a wrong filter, are off by 1e-2 and more."""
  torch.manual_seed(0)
  theirs = torch_reference.resnet_generator(8, 6, antialias=True)
  torch_reference.xavier_init(theirs)
  ours = cut_models.cut_generator(8, 6)
  copy_convolutions(theirs, ours)
  x = _image(36, 44)
  with torch.no_grad():
    want = _nhwc(theirs(_nchw(x)))
    want_feats = [_nhwc(f) for f in torch_reference.encode(theirs, _nchw(x), [0, 4, 8, 12, 16])]
  np.testing.assert_allclose(ours(x, training=True).numpy(), want, atol=1e-5)
  feats = cut_models.nce_encoder(ours)(x, training=True)
  assert [f.shape[1:] for f in feats] == [f.shape[1:] for f in want_feats]
  for got, expected in zip(feats, want_feats):
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5 * np.abs(expected).max())


def test_discriminator_equals_the_authors():
  torch.manual_seed(1)
  theirs = torch_reference.patch_discriminator(8, 3, antialias=True)
  torch_reference.xavier_init(theirs)
  ours = cut_models.cut_discriminator(8, 3)
  copy_convolutions(theirs, ours)
  x = _image(64, 72, seed=1)
  with torch.no_grad():
    want = _nhwc(theirs(_nchw(x)))
  got = ours(x, training=True).numpy()
  assert got.shape == want.shape == (1, 6, 7, 1)
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_blur_layers_equal_the_authors_at_odd_and_even_sizes():
  """BlurUpsample is the authors' transposed blur; BlurDownsample their strided blur, also at
  odd sides (output ceil(side / 2))."""
  x = np.random.default_rng(0).normal(size=(2, 7, 10, 5)).astype(np.float32)
  with torch.no_grad():
    up = _nhwc(torch_reference.Upsample(5)(_nchw(x)))
    down = _nhwc(torch_reference.Downsample(5)(_nchw(x)))
  np.testing.assert_allclose(cut_models.BlurUpsample()(x).numpy(), up, atol=1e-6)
  np.testing.assert_allclose(cut_models.BlurDownsample()(x).numpy(), down, atol=1e-6)
  assert up.shape == (2, 14, 20, 5) and down.shape == (2, 4, 5, 5)


def test_full_size_layout_is_the_authors():
  """52 state-dict keys with the blur filters at model.7, 11, 21 and 25 (what .pth import
  reads); our generator has the same weights, shape for shape."""
  theirs = torch_reference.resnet_generator(64, 9, antialias=True)
  keys = list(theirs.state_dict())
  assert len(keys) == 52
  assert [k for k in keys if k.endswith("filt")] == [f"{i}.filt" for i in (7, 11, 21, 25)]
  ours = cut_models.cut_generator(64, 9)
  want = [tuple(p.shape) for p in theirs.parameters()]
  got = [tuple(np.transpose(w.numpy(), (3, 2, 0, 1)).shape) if w.ndim == 4 else tuple(w.shape)
         for w in ours.trainable_weights]
  assert got == want


def test_xavier_init_has_the_authors_spread_and_a_new_draw_per_layer():
  ours = cut_models.cut_generator(8, 6)
  cut_models.xavier_init(ours, seed=3)
  convs = [l for l in ours.layers if isinstance(l, keras.layers.Conv2D)]
  block = [l for l in convs if l.name.startswith("block")]
  for layer in convs:
    kh, kw, c_in, c_out = layer.kernel.shape
    want = 0.02 * np.sqrt(2 / (kh * kw * (c_in + c_out)))
    loose = layer.kernel.shape.num_elements() < 1000  # few draws: a wider spread
    assert np.std(layer.kernel.numpy()) == pytest.approx(want, rel=0.5 if loose else 0.2)
  assert not np.allclose(block[0].kernel.numpy(), block[1].kernel.numpy())
