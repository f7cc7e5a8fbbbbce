"""`python -m cyclegan.evaluate`, and the quality bar of the default training run."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import scipy.linalg

from cyclegan import config as config_lib
from cyclegan import evaluate
from cyclegan import export
from cyclegan import metrics
from cyclegan import models
from cyclegan import synthetic
from conftest import REPO
from quiet_test import run_as_user, tf_chatter


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
  base = tmp_path_factory.mktemp("model") / "a2b"
  export.save(models.resnet_generator(ngf=4, n_blocks=1), str(base))
  return str(base)


def _evaluate(*args):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.run([sys.executable, "-m", "cyclegan.evaluate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_prints_and_writes_one_json_line(tiny_export, tmp_path):
  done = _evaluate("--model", tiny_export, "--inception", "random", "--max_images", "8",
                   "--output", str(tmp_path / "m.json"))
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result == json.loads((tmp_path / "m.json").read_text())
  assert result["images"] == 8 and result["direction"] == "a2b"
  for key in ("fid", "kid", "kid_std", "fid_identity_baseline"):
    assert isinstance(result[key], float)
  assert set(result["paired"]) == set(result["identity_baseline"]) == {"l1", "psnr", "ssim"}


def test_without_inception_weights_fid_is_skipped_or_an_error(tiny_export, tmp_path):
  """The default computes what it can offline and says what it skipped; asking for FID
  explicitly without weights is a one-line error with status 2."""
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "cyclegan.evaluate", "--model", tiny_export, *args], cwd=REPO,
      env={**os.environ, "KERAS_HOME": str(tmp_path), "CYCLEGAN_HOME": str(tmp_path),
           "TORCH_HOME": str(tmp_path)}, capture_output=True, text=True)
  done = run()
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout)
  assert "paired" in result and "fid" not in result
  assert "pt_inception-2015-12-05" in result["fid_skipped"] and "InceptionV3" in result["fid_skipped"]
  assert "FID and KID skipped" in done.stderr
  done = run("--metrics", "fid")
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert "InceptionV3" in done.stderr and "--metrics paired" in done.stderr


def test_errors_are_one_line_with_status_2(tiny_export, tmp_path):
  done = _evaluate("--model", str(tmp_path / "nothing"), "--metrics", "paired")
  assert done.returncode == 2 and "not an exported model" in done.stderr


def test_real_images_fid_path(tiny_export, shared_data):
  result = evaluate.evaluate(tiny_export, str(shared_data / "monet2photo"), which="fid",
                             inception="random", max_images=6)
  assert result["images"] == 6 and result["fid"] >= 0 and "paired" not in result
  with pytest.raises(Exception, match="ground truth"):
    evaluate.evaluate(tiny_export, str(shared_data / "monet2photo"), which="paired", max_images=2)


def test_fid_is_zero_for_the_true_mapping_and_matches_scipy_for_the_baseline(tiny_export,
                                                                          monkeypatch):
  """With a feature extractor whose features are known (mean colour) and the exact A->B
  mapping as the model: outputs equal targets, and the baseline is FID(testA, testB)."""
  monkeypatch.setattr(metrics, "inception", lambda which: (keras.Sequential(
      [keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D()]), "mean colour"))
  monkeypatch.setattr(evaluate.translate, "TiledModel", lambda *args: synthetic.to_domain_b)
  result = evaluate.evaluate(tiny_export, config_lib.SYNTHETIC, which="fid",
                             inception="random", max_images=32)
  c = config_lib.make_config({})
  test_a = synthetic.make_splits(c.synthetic_size, c.synthetic_train, c.synthetic_test)["testA"]
  colours = [(x[:32] / 127.5 - 1).mean((1, 2)) for x in (test_a, synthetic.to_domain_b(test_a))]
  (mu1, s1), (mu2, s2) = [(c.mean(0), np.cov(c, rowvar=False)) for c in colours]
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
  assert result["fid"] == pytest.approx(0, abs=1e-9)
  assert want > 0.1 and result["fid_identity_baseline"] == pytest.approx(want, rel=1e-3)


def test_default_training_run_beats_the_identity_baseline(tmp_path):
  """The quality bar: `python -m cyclegan.train` with no flags, as a user runs it.

  Seeds 0-3 of the default run reached held-out L1 0.106-0.111 (mean 0.108) and PSNR
  17.3-17.7 dB (mean 17.5) on the 64 held-out pairs, against the identity baseline's 0.339 and
  8.4 dB: 0.23 and 9.2 dB better, with a spread of 0.002 and 0.2 dB between seeds. A broken
  loss, schedule or export lands near the baseline; the bar sits at under half the margin.
  """
  stderr = run_as_user("cyclegan.train", "--workdir", str(tmp_path / "w"),
                       "--export_dir", str(tmp_path / "e"))
  assert not tf_chatter(stderr), "\n".join(tf_chatter(stderr))  # Its stderr is only our lines.
  result = evaluate.evaluate(str(tmp_path / "e" / "a2b" / "1"), config_lib.SYNTHETIC,
                             which="paired")
  model, baseline = result["paired"], result["identity_baseline"]
  assert model["l1"] < baseline["l1"] - 0.1
  assert model["psnr"] > baseline["psnr"] + 5.0
