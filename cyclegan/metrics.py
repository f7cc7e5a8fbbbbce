"""Translation quality: FID and KID on InceptionV3 features, SWD on patches, paired metrics.

FID and KID follow Heusel et al. 2017 and Binkowski et al. 2018 as the standard tools compute
them (pool3 features, 2048-d, images resized bilinearly to 299x299). With the 2015 Inception
that pytorch-fid and TTUR load (fid_inception.py) the features are pytorch-fid's, so FIDs
compare with published ones computed the same way; with Keras's ImageNet InceptionV3 they
compare only with our own. SWD needs no weights: the cheap score that is always there.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from cyclegan import cli
from cyclegan import fid_inception
from cyclegan import images as images_lib
from cyclegan import input_pipeline

INCEPTION_SIZE = 299
KERAS_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
               + KERAS_WEIGHTS)


INCEPTIONS = ("auto", "fid2015", "keras")


class MissingWeightsError(cli.UserError, FileNotFoundError):
  """No InceptionV3 weights on this machine; the message says how to get them."""


# --- Estimators ------------------------------------------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2):
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), the trace term via eigenvalues of S1 S2.

  S1 S2 is similar to a PSD matrix, so its eigenvalues are real and >= 0 up to rounding;
  this avoids a matrix square root and its complex round-off.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
  sqrt_trace = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * sqrt_trace)


def fid(features1, features2):
  """FID between two [n, d] feature sets.

  With fewer images than feature dimensions (the usual case with 2048-d features) the trace
  term comes exactly, and in milliseconds, from the centred features A and B themselves: the
  nonzero eigenvalues of S1 S2 are the squared singular values of A B^T / sqrt((n-1)(m-1)),
  so tr (S1 S2)^1/2 is that matrix's nuclear norm.
  """
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  (n, d), m = f1.shape, len(f2)
  if min(n, m) > d:
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    return frechet_distance(*stats[0], *stats[1])
  a, b = f1 - f1.mean(0), f2 - f2.mean(0)
  sqrt_trace = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
  return float(np.sum((f1.mean(0) - f2.mean(0)) ** 2) + (a ** 2).sum() / (n - 1) +
               (b ** 2).sum() / (m - 1) - 2 * sqrt_trace)


def kid(features1, features2, subsets=100, subset_size=1000, seed=0):
  """Unbiased MMD^2 with the kernel (x.y/d + 1)^3, mean and std over random subsets."""
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  m = min(subset_size, len(f1), len(f2))
  rng = np.random.default_rng(seed)
  kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
  values = []
  for _ in range(subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) +
                  (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))


def _patches(images, per_image, rng, size=7):
  """per_image random size x size patches of each uint8 image at its full and half resolution
  (two scales, so colour and texture both count), flattened: {scale: [n, size*size*3]}."""
  out = {}
  for scale in (1, 2):
    rows = []
    for image in images:
      x = np.asarray(image, np.float32)
      if scale == 2:
        h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
      ys = rng.integers(0, x.shape[0] - size + 1, per_image)
      xs = rng.integers(0, x.shape[1] - size + 1, per_image)
      rows += [x[y:y + size, x0:x0 + size].ravel() for y, x0 in zip(ys, xs)]
    out[scale] = np.stack(rows)
  return out


def swd(images1, images2, per_image=64, projections=128, seed=0):
  """Sliced Wasserstein distance between the 7x7 patches of two image sets (Karras et al. 2018,
  at two scales), in grey levels: needs no trained network, so it is always available. Each
  random direction's sorted projections are compared; the larger set's patches are subsampled
  to the smaller's count."""
  # Both sets' patches from the same positions, so that a set against itself scores 0.
  patches1 = _patches(images1, per_image, np.random.default_rng(seed))
  patches2 = _patches(images2, per_image, np.random.default_rng(seed))
  rng = np.random.default_rng(seed + 1)
  distances = []
  for scale in patches1:
    a, b = patches1[scale], patches2[scale]
    n = min(len(a), len(b))
    a, b = (x if len(x) == n else x[rng.choice(len(x), n, replace=False)] for x in (a, b))
    directions = rng.normal(size=(a.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0)
    distances.append(np.abs(np.sort(a @ directions, 0) - np.sort(b @ directions, 0)).mean())
  return float(np.mean(distances))


def paired(outputs, targets):
  """L1 (on [0, 1]), PSNR and SSIM (dB and index on uint8 images), averaged over images."""
  x = tf.constant(outputs, tf.float32)
  y = tf.constant(targets, tf.float32)
  return {"l1": float(tf.reduce_mean(tf.abs(x - y))) / 255.0,
          "psnr": float(tf.reduce_mean(tf.image.psnr(x, y, 255.0))),
          "ssim": float(tf.reduce_mean(tf.image.ssim(x, y, 255.0)))}


# --- Features --------------------------------------------------------------------------------

def _fid2015_places():
  """Where the 2015 Inception's file is looked for: our cache, then pytorch-fid's (torch hub)."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
  return [os.path.join(cli.home(), fid_inception.FILE_NAME),
          os.path.expanduser(os.path.join(torch_home, "hub", "checkpoints",
                                          fid_inception.FILE_NAME))]


def _keras_place():
  return os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models",
                      KERAS_WEIGHTS)


def inception_file(which="auto"):
  """(kind, file) for --inception: auto (the 2015 graph's file if present, else Keras's),
  fid2015, keras, a .pth or .h5 file, or random (Keras's network untrained: tests only)."""
  if which == "random":
    return "keras", None
  if which not in INCEPTIONS:
    if not os.path.isfile(which):
      raise MissingWeightsError(f"--inception {which} is neither auto, fid2015, keras nor a file")
    return ("fid2015" if which.endswith(".pth") else "keras"), which
  found = {"fid2015": next((p for p in _fid2015_places() if os.path.isfile(p)), None),
           "keras": _keras_place() if os.path.isfile(_keras_place()) else None}
  for kind in (("fid2015", "keras") if which == "auto" else (which,)):
    if found[kind]:
      return kind, found[kind]
  fid2015 = (f"the 2015 Inception that published FIDs use: download {fid_inception.URL} to "
             f"{_fid2015_places()[0]}")
  keras_ = f"Keras's InceptionV3: download {WEIGHTS_URL} to {_keras_place()}"
  raise MissingWeightsError("FID/KID need Inception weights, and none are on this machine: "
                            + {"auto": f"{fid2015} (or {keras_})", "fid2015": fid2015,
                               "keras": keras_}[which] + "; or point --inception at the file")


def inception(which="auto"):
  """(InceptionV3 pool features as a Keras model, its kind): see inception_file."""
  kind, path = inception_file(which)
  if kind == "fid2015":
    try:
      return fid_inception.load(path), kind
    except ValueError as e:
      raise MissingWeightsError(str(e)) from None
  return keras.applications.InceptionV3(
      include_top=False, pooling="avg", weights=path,
      input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3)), kind


def inception_features(model, images, batch_size=32):
  """uint8 images (a list; sizes may differ) -> float64 [n, 2048]: bilinear resize to 299
  (pytorch-fid's, without antialiasing), scaled to [-1, 1] as both Inceptions expect."""
  @tf.function(reduce_retracing=True)
  def features(batch):
    x = tf.image.resize(tf.cast(batch, tf.float32), [INCEPTION_SIZE, INCEPTION_SIZE])
    return model(images_lib.to_unit_range(x), training=False)
  out = [features(tf.constant(np.stack(batch))).numpy()
         for batch in input_pipeline.same_size_batches(images, batch_size)]
  return np.concatenate(out).astype(np.float64)
