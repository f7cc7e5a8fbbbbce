"""The `python -m cyclegan.train` command as a user runs it, in subprocesses."""

import os
import signal
import subprocess
import sys
import time

import tensorflow as tf

from conftest import REPO, tiny_flags


def _train(tmp_path, *flags, wait=True):
  args = [sys.executable, "-m", "cyclegan.train", "--workdir", str(tmp_path / "w"),
          "--export_dir", str(tmp_path / "e"), *tiny_flags(), *flags]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  if not wait:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_train_exports_then_resumes(tmp_path):
  done = _train(tmp_path, "--max_steps", "3")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "SavedModels:" in done.stdout
  for direction in ("a2b", "b2a"):
    assert os.path.isfile(tmp_path / "e" / direction / "1" / "saved_model.pb")
  assert os.path.isfile(tmp_path / "w" / "config.json")
  assert any("tfevents" in f for f in os.listdir(tmp_path / "w" / "tensorboard"))
  assert "ETA" in done.stderr and "img/s" in done.stderr

  done = _train(tmp_path, "--max_steps", "5")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from" in done.stderr and "steps 3..5" in done.stderr
  assert os.path.isfile(tmp_path / "e" / "a2b" / "2" / "saved_model.pb")

  done = _train(tmp_path, "--max_steps", "6", "--ngf", "8")
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "error: workdir" in done.stderr and "ngf=4" in done.stderr


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path):
  done = _train(tmp_path, "--dataset", str(tmp_path / "missing"))
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "error: dataset folder" in done.stderr
  assert not os.path.exists(tmp_path / "w")
  help_text = subprocess.run([sys.executable, "-m", "cyclegan.train", "--help"], cwd=REPO,
                             capture_output=True, text=True).stdout
  for flag in ("--dataset", "--precision", "--max_steps", "--pool_size", "--strategy"):
    assert flag in help_text


def test_kill_9_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
  for delay in (0.0, 0.7):
    proc = _train(tmp_path, "--max_steps", "1000", "--checkpoint_every", "1", "--export=false",
                  wait=False)
    checkpoints = tmp_path / "w" / "checkpoints"
    deadline = time.monotonic() + 120
    while not tf.train.latest_checkpoint(str(checkpoints)) and time.monotonic() < deadline:
      time.sleep(0.1)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert tf.train.latest_checkpoint(str(checkpoints)), "no checkpoint before the kill"
  step = int(tf.train.latest_checkpoint(str(checkpoints)).rsplit("-", 1)[1])
  done = _train(tmp_path, "--max_steps", str(step + 2), "--export=false")
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"steps {step}..{step + 2}" in done.stderr


def test_a_compiled_run_keeps_its_xla_executables_for_the_next(tmp_path):
  """--jit_compile: the first run writes its compiled programs to $CYCLEGAN_HOME/xla_cache;
  resuming it, and the same command in another workdir, load them (what it saves:
  docs/performance.md), writing nothing new and printing none of TensorFlow's notices of
  loading them. (Before the step was traced ahead of the restore, a resumed run compiled all
  its programs anew: restoring took the names they would have had.)"""
  env = {**os.environ, "CYCLEGAN_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("TF_XLA_FLAGS", None)
  cache = tmp_path / "home" / "xla_cache"
  entries = []
  for workdir, max_steps in (("w0", 1), ("w0", 2), ("w1", 1)):
    flags = tiny_flags(max_steps=max_steps, jit_compile=True, export=False, eval_every=0)
    done = subprocess.run([sys.executable, "-m", "cyclegan.train", *flags, "--workdir",
                           str(tmp_path / workdir)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "XlaSerializedCacheEntry" not in done.stderr, done.stderr[-2000:]
    assert ("resumed from" in done.stderr) == (max_steps == 2)
    entries.append({p.name: p.stat().st_mtime_ns for p in cache.iterdir()})
  assert entries[0] and entries[1] == entries[0] and entries[2] == entries[0]
