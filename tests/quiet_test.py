"""A command's stderr is its own lines; TensorFlow's INFO chatter comes back only when asked."""

import os
import pathlib
import re
import subprocess
import sys

from conftest import REPO, tiny_flags

from cyclegan import quiet

TF_CHATTER = re.compile(r"^I\d{4}|^W\d{4} .*\.cc:|oneDNN custom operations|signature_serialization"
                        r"|Sharding callback|Assets written|Writing fingerprint|absl::InitializeLog"
                        r"|XNNPACK delegate",
                        re.MULTILINE)
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ ([^:\]]+):\d+\]")
_OURS = {p.name for p in (pathlib.Path(REPO) / "cyclegan").rglob("*.py")}


def _not_ours(line):
  log_line = _ABSL_LINE.match(line)
  return log_line.group(1) not in _OURS if log_line else bool(TF_CHATTER.search(line))


def tf_chatter(stderr):
  """The lines of stderr that are not ours: TensorFlow's, or any log line from outside cyclegan/."""
  return [line for line in stderr.splitlines() if _not_ours(line)]


def run_as_user(*args, **env):
  """Runs `python -m cyclegan.<args>` with the environment a user has (no TF_CPP_MIN_LOG_LEVEL)."""
  clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env={**clean, **env},
                        capture_output=True, text=True, timeout=1800)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def test_train_and_export_print_only_their_lines_unless_asked(tmp_path):
  w, e = str(tmp_path / "w"), str(tmp_path / "e")
  stderr = run_as_user("cyclegan.train", *tiny_flags(epochs=1, epochs_decay=0), "--workdir", w,
                       "--export_dir", e)
  assert not tf_chatter(stderr), "\n".join(tf_chatter(stderr))
  assert re.search(r"step 8/8 .*img/s \| ETA", stderr) and "exported" in stderr, stderr
  # LiteRT prints its own INFO line at a model's first run, whatever TF's log level says.
  stderr = run_as_user("cyclegan.export", "--model", os.path.join(e, "a2b"), "--formats", "tflite")
  assert not tf_chatter(stderr), "\n".join(tf_chatter(stderr))
  # The same export, asking for TF's logs each way: its chatter is back (so the check can fail).
  loud = run_as_user("cyclegan.export", "--workdir", w, "--export_dir", str(tmp_path / "e2"),
                     "--verbosity", "1")
  assert "oneDNN custom operations" in loud and "signature_serialization" in loud, loud[-3000:]
  assert tf_chatter(loud)
  assert "exported" in loud
  loud = run_as_user("cyclegan.export", "--workdir", w, "--export_dir", str(tmp_path / "e3"),
                     TF_CPP_MIN_LOG_LEVEL="0")
  assert "absl::InitializeLog" in loud and "Writing fingerprint" in loud, loud[-3000:]


def test_only_a_cyclegan_command_is_quietened():
  assert quiet.is_command(["python", "-m", "cyclegan.train", "--epochs", "1"])
  assert quiet.is_command(["/usr/bin/python3", "-X", "dev", "-m", "cyclegan.serve"])
  assert not quiet.is_command(["python", "-m", "pytest", "tests/quiet_test.py"])
  assert not quiet.is_command(["python", "notebook.py", "-m", "other.cyclegan"])


def test_verbosity_is_read_as_absl_reads_it():
  assert quiet._verbosity(["-m", "cyclegan.train"]) == 0  # pylint: disable=protected-access
  for argv, level in ((["--verbosity", "1"], 1), (["--verbosity=2"], 2), (["-v", "1"], 1),
                      (["-v=0"], 0), (["-v", "-1"], -1), (["--verbosity", "debug"], 0)):
    assert quiet._verbosity(["-m", "cyclegan.train", *argv]) == level, argv  # pylint: disable=protected-access


def test_only_the_xla_cache_notices_known_to_be_harmless_are_dropped():
  """The lines TensorFlow 2.21 logged loading each cached program on this machine go; a
  feature the host really lacks (a cache made on another CPU) still shows."""
  features = "Compile machine features: [+avx512bf16,+prefer-no-scatter] vs host machine features"
  lines = [
      b"E0000 00:00:1796589436.186475   15398 text_format.cc:378] Error parsing text-format "
      b"tensorflow.XlaSerializedCacheEntry: 2:1: Expected identifier, got: 6",
      f"E0000 00:00:1796589436.283356   15398 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
      f"Target machine feature +prefer-no-scatter is not  supported on the host machine. "
      f"{features}".encode(),
      f"E0000 00:00:1796589436.283412   15398 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
      f"Target machine feature +prefer-no-gather is not  supported on the host machine. "
      f"{features}".encode()]
  other_cpu = (f"E0000 00:00:1796589436.283412   15398 cpu_aot_loader.cc:220] Loading XLA:CPU "
               f"AOT result. Target machine feature +avx512bf16 is not  supported on the host "
               f"machine. {features}").encode()
  notices = quiet._XLA_CACHE_NOTICES  # pylint: disable=protected-access
  assert all(notices.search(line) for line in lines) and not notices.search(other_cpu)
