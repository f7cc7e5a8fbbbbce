"""FID and KID estimators against closed forms and scipy; paired metrics; Inception features."""

import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from cyclegan import metrics


def _spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T + d * np.eye(d) * 0.1


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = _spd(rng, 8), _spd(rng, 8)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
  var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
  want = 5.0 + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))  # = 5 + 1 + 1 + 0
  assert metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(want)
  assert metrics.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0, abs=1e-9)


def test_fid_of_samples_converges_to_the_gaussians_distance():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(20000, 4))
  y = rng.normal(size=(20000, 4)) * 2 + 1
  # |mu|^2 = 4; trace term: 4 * (1 + 4 - 2 * 2) = 4.
  assert metrics.fid(x, y) == pytest.approx(8.0, rel=0.03)


def test_kid_matches_a_direct_double_loop():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
  k = lambda a, b: (a @ b / 3 + 1) ** 3
  m = 6
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  mean, std = metrics.kid(x, y, subsets=3, subset_size=6)
  assert mean == pytest.approx(xx + yy - 2 * xy) and std == pytest.approx(0, abs=1e-12)


def test_kid_is_unbiased_near_zero_for_one_distribution():
  rng = np.random.default_rng(3)
  same, _ = metrics.kid(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), subsets=20, subset_size=200)
  apart, _ = metrics.kid(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)) + 0.5, subsets=20, subset_size=200)
  assert abs(same) < 0.01 < apart


def _ssim_by_hand(x, y):
  """SSIM (Wang et al. 2004) as the standard setting computes it: 11x11 Gaussian windows
  (sigma 1.5) inside the image, K1 0.01, K2 0.03, L 255; mean over windows, channels, images."""
  g = np.exp(-0.5 * (np.arange(11) - 5.0) ** 2 / 1.5**2)
  window = np.outer(g, g) / g.sum() ** 2
  local = lambda a: np.stack([[scipy.signal.correlate2d(a[n, ..., c], window, mode="valid")
                               for c in range(a.shape[-1])] for n in range(len(a))])
  x, y = x.astype(np.float64), y.astype(np.float64)
  mx, my = local(x), local(y)
  vx, vy, cxy = local(x * x) - mx**2, local(y * y) - my**2, local(x * y) - mx * my
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  return np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))


def test_paired_metrics_closed_form():
  """Flat images: SSIM is its luminance term alone; textured ones: the formula by hand."""
  target = np.full((2, 16, 16, 3), 100, np.uint8)
  out = metrics.paired(target + 10, target)
  assert out["l1"] == pytest.approx(10 / 255)
  assert out["psnr"] == pytest.approx(20 * np.log10(255 / 10), rel=1e-5)
  c1 = (0.01 * 255) ** 2
  # TF's float32 E[xy] - E[x]E[y], of terms ~22000, is off by ~7e-5 here.
  assert out["ssim"] == pytest.approx((2 * 110 * 100 + c1) / (110**2 + 100**2 + c1), abs=2e-4)
  assert metrics.paired(target, target)["ssim"] == pytest.approx(1.0)
  rng = np.random.default_rng(5)
  x = rng.integers(0, 256, (2, 24, 20, 3), np.uint8)
  y = np.clip(0.7 * x + rng.normal(40, 30, x.shape), 0, 255).astype(np.uint8)
  want = _ssim_by_hand(x, y)
  assert 0.2 < want < 0.9 and metrics.paired(x, y)["ssim"] == pytest.approx(want, rel=1e-4)


def test_inception_features_for_mixed_sizes_with_random_weights():
  model = metrics.inception("random")
  rng = np.random.default_rng(4)
  images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
            [(40, 30, 3), (40, 30, 3), (64, 64, 3)]]
  features = metrics.inception_features(model, images, batch_size=2)
  assert features.shape == (3, 2048) and np.isfinite(features).all()


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  with pytest.raises(metrics.MissingWeightsError, match="download https://.*--inception_weights"):
    metrics.inception("keras")
