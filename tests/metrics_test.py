"""FID and KID estimators against closed forms and scipy; paired metrics; Inception features."""

import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from cyclegan import fid_inception
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


def test_fid_with_fewer_images_than_dimensions_equals_scipy_sqrtm_of_the_covariances():
  """The nuclear-norm route (n < d, as with 2048-d Inception features) against pytorch-fid's
  arithmetic: scipy's sqrtm of S1 S2 on the sample covariances (rank-deficient here)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(30, 64)) @ rng.normal(size=(64, 64)) * 0.3
  y = rng.normal(size=(25, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.2
  (mu1, s1), (mu2, s2) = [(f.mean(0), np.cov(f, rowvar=False)) for f in (x, y)]
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
  assert metrics.fid(x, y) == pytest.approx(want, rel=1e-6)
  assert metrics.fid(x, y) == pytest.approx(metrics.frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


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
  model, kind = metrics.inception("random")
  assert kind == "keras"
  rng = np.random.default_rng(4)
  images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
            [(40, 30, 3), (40, 30, 3), (64, 64, 3)]]
  features = metrics.inception_features(model, images, batch_size=2)
  assert features.shape == (3, 2048) and np.isfinite(features).all()


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
  for name in ("KERAS_HOME", "CYCLEGAN_HOME", "TORCH_HOME"):
    monkeypatch.setenv(name, str(tmp_path))
  with pytest.raises(metrics.MissingWeightsError, match="download https://.*--inception"):
    metrics.inception("keras")
  with pytest.raises(metrics.MissingWeightsError,
                     match=f"download {fid_inception.URL} to {tmp_path}.*--inception"):
    metrics.inception("fid2015")
  with pytest.raises(metrics.MissingWeightsError, match="2015.*or Keras's"):
    metrics.inception_file("auto")
  with pytest.raises(metrics.MissingWeightsError, match="neither auto, fid2015, keras nor a file"):
    metrics.inception_file(str(tmp_path / "no.pth"))


def test_the_2015_inception_is_found_where_pytorch_fid_keeps_it_and_preferred(tmp_path,
                                                                              monkeypatch):
  """auto takes the 2015 file from our cache or from torch hub's (where pytorch-fid downloads
  it) before Keras's weights; an explicit file picks its kind by extension."""
  for name in ("KERAS_HOME", "CYCLEGAN_HOME", "TORCH_HOME"):
    monkeypatch.setenv(name, str(tmp_path / name))
  keras_file = tmp_path / "KERAS_HOME" / "models" / metrics.KERAS_WEIGHTS
  keras_file.parent.mkdir(parents=True)
  keras_file.write_bytes(b"")
  assert metrics.inception_file("auto") == ("keras", str(keras_file))
  hub_file = tmp_path / "TORCH_HOME" / "hub" / "checkpoints" / fid_inception.FILE_NAME
  hub_file.parent.mkdir(parents=True)
  hub_file.write_bytes(b"")
  assert metrics.inception_file("auto") == ("fid2015", str(hub_file))
  ours = tmp_path / "CYCLEGAN_HOME" / fid_inception.FILE_NAME
  ours.parent.mkdir()
  ours.write_bytes(b"")
  assert metrics.inception_file("fid2015") == ("fid2015", str(ours))
  assert metrics.inception_file(str(keras_file)) == ("keras", str(keras_file))
  assert metrics.inception_file(str(hub_file)) == ("fid2015", str(hub_file))


def _textures(count, seed, low=60, high=190):
  """Smooth random colour fields with fine grain, values kept off 0 and 255 (no clipping)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(low, high, (count, 4, 4, 3))
  smooth = np.repeat(np.repeat(coarse, 8, 1), 8, 2)
  return list(np.clip(smooth + rng.normal(0, 5, smooth.shape), 0, 255).astype(np.uint8))


def test_swd_is_small_within_a_distribution_and_measures_a_shift_in_grey_levels():
  """Two samples of one distribution are close; shifting every value by 40 levels moves each
  projection by 40 |sum of the direction's components|, on average 40 sqrt(2/pi) = 31.9 for
  random unit directions."""
  same = metrics.swd(_textures(32, 0), _textures(32, 1))
  shifted = metrics.swd(_textures(32, 0), [x + 40 for x in _textures(32, 1)])
  assert same < 4 and shifted == pytest.approx(40 * np.sqrt(2 / np.pi), rel=0.15)
  assert metrics.swd(_textures(32, 0), _textures(32, 0)) == 0
