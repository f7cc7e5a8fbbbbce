"""Translation quality: FID and KID on InceptionV3 features, and paired metrics.

FID and KID follow Heusel et al. 2017 and Binkowski et al. 2018 as the standard tools compute
them (pool3 features, 2048-d, images resized to 299x299). The features come from Keras's
ImageNet InceptionV3, not the 2015 TF graph that pytorch-fid and TTUR load, and resizing
differs between tools (clean-fid, Parmar et al. 2022), so compare our numbers with our own
numbers, not with published ones.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from cyclegan import cli
from cyclegan import images as images_lib
from cyclegan import input_pipeline

INCEPTION_SIZE = 299
KERAS_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
               + KERAS_WEIGHTS)


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
  """FID between two [n, d] feature sets."""
  stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (features1, features2)]
  return frechet_distance(*stats[0], *stats[1])


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


def paired(outputs, targets):
  """L1 (on [0, 1]), PSNR and SSIM (dB and index on uint8 images), averaged over images."""
  x = tf.constant(outputs, tf.float32)
  y = tf.constant(targets, tf.float32)
  return {"l1": float(tf.reduce_mean(tf.abs(x - y))) / 255.0,
          "psnr": float(tf.reduce_mean(tf.image.psnr(x, y, 255.0))),
          "ssim": float(tf.reduce_mean(tf.image.ssim(x, y, 255.0)))}


# --- Features --------------------------------------------------------------------------------

def inception(weights):
  """InceptionV3 pool features: `weights` a file, 'keras' (Keras's cache) or 'random' (tests)."""
  if weights == "keras":
    weights = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")),
                           "models", KERAS_WEIGHTS)
    if not os.path.isfile(weights):
      raise MissingWeightsError(
          f"FID/KID need InceptionV3 ImageNet weights and {weights} is missing: download "
          f"{WEIGHTS_URL} there (or anywhere and pass --inception_weights FILE), or use "
          "--metrics paired")
  elif weights != "random" and not os.path.isfile(weights):
    raise MissingWeightsError(f"--inception_weights {weights} does not exist")
  return keras.applications.InceptionV3(
      include_top=False, pooling="avg", weights=None if weights == "random" else weights,
      input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))


def inception_features(model, images, batch_size=32):
  """uint8 images (a list; sizes may differ) -> float64 [n, 2048]: bilinear resize to 299,
  scaled to [-1, 1] as Keras's InceptionV3 expects."""
  @tf.function(reduce_retracing=True)
  def features(batch):
    x = tf.image.resize(tf.cast(batch, tf.float32), [INCEPTION_SIZE, INCEPTION_SIZE])
    return model(images_lib.to_unit_range(x), training=False)
  out = [features(tf.constant(np.stack(batch))).numpy()
         for batch in input_pipeline.same_size_batches(images, batch_size)]
  return np.concatenate(out).astype(np.float64)
