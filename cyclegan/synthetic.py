"""The built-in dataset: warm scenes (A) and the same kind of scenes hue-rotated by 120 degrees (B).

Procedural, so it needs no files and no network, and the true A->B mapping is known:
`to_domain_b` (a channel rotation R,G,B -> B,R,G, which is exact in uint8). Training images of
the two domains come from disjoint random scenes (unpaired); the test split is paired:
testB[i] == to_domain_b(testA[i]), for measuring translation quality against ground truth.
"""

import numpy as np


def to_domain_b(images_a):
  """The ground-truth A->B mapping: hue + 120 degrees."""
  return np.ascontiguousarray(images_a[..., [2, 0, 1]])


def _warm_colors(rng, n):
  """RGB in [0, 1] with hue in red..yellow, so that A and B have disjoint palettes."""
  hue = rng.uniform(0.0, 0.15, n) * 6.0  # sector units: 0..0.9, i.e. between red and yellow.
  sat = rng.uniform(0.5, 1.0, n)
  val = rng.uniform(0.35, 1.0, n)
  r = val
  g = val * (1.0 - sat * (1.0 - hue))
  b = val * (1.0 - sat)
  return np.stack([r, g, b], axis=-1)


def warm_scenes(n, size, seed):
  """n uint8 images [n, size, size, 3]: a gradient sky and 2-5 discs and boxes."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  images = np.empty((n, size, size, 3), np.float32)
  for k in range(n):
    top, bottom = _warm_colors(rng, 2)
    img = top * (1 - yy[..., None]) + bottom * yy[..., None]
    for _ in range(rng.integers(2, 6)):
      color = _warm_colors(rng, 1)[0]
      cy, cx = rng.uniform(0.1, 0.9, 2)
      radius = rng.uniform(0.08, 0.3)
      if rng.random() < 0.5:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
      else:
        mask = (np.abs(yy - cy) < radius) & (np.abs(xx - cx) < rng.uniform(0.08, 0.3))
      img[mask] = color
    images[k] = img
  return np.round(images * 255).astype(np.uint8)


def make_splits(size=72, n_train=256, n_test=64, seed=0):
  """trainA/trainB from disjoint scenes; testA/testB paired by index."""
  test_a = warm_scenes(n_test, size, seed=seed * 10 + 3)
  return {
      "trainA": warm_scenes(n_train, size, seed=seed * 10 + 1),
      "trainB": to_domain_b(warm_scenes(n_train, size, seed=seed * 10 + 2)),
      "testA": test_a,
      "testB": to_domain_b(test_a),
  }


def camera_pan(image, frames, height, width, step):
  """[frames, height, width, 3] crops of `image` moving `step` pixels right per frame: a camera
  pan whose motion is known exactly (frame t+1 at column x shows frame t at x + step)."""
  if width + step * (frames - 1) > image.shape[1] or height > image.shape[0]:
    raise ValueError(f"a {image.shape[1]}x{image.shape[0]} image is too small for this pan")
  return np.stack([image[:height, t * step:t * step + width] for t in range(frames)])
