"""Keeps a command's stderr to its own lines: TensorFlow's INFO chatter only when asked for.

Asked for means `--verbosity`/`-v` of 1 or more, or TF_CPP_MIN_LOG_LEVEL=0 in the environment.
Warnings and errors (ours and TensorFlow's Python ones) always show; TensorFlow's C++ warnings
are hidden with its INFO (TF_CPP_MIN_LOG_LEVEL=2), as they speak of its internals (rendezvous,
graph passes), not of anything a person running a command can act on. Only a process started as
`python -m cyclegan.<command>` is changed: a library user's notebook keeps TensorFlow's defaults.
"""

import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading

# Printed while `import tensorflow` runs, before TF's C++ logging reads TF_CPP_MIN_LOG_LEVEL.
_IMPORT_NOTICES = re.compile(rb"absl::InitializeLog\(\)|\] oneDNN custom operations are on")
# LiteRT's INFO line, printed whatever TF_CPP_MIN_LOG_LEVEL says.
_LITERT_NOTICES = re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate")
# Logged as errors for each program loaded from XLA's persistent cache (a --jit_compile run's
# second start): TensorFlow tries the file as text before binary, and XLA:CPU names two LLVM
# tuning flags it compiled with as CPU features the host lacks. Any other feature still shows.
_XLA_CACHE_NOTICES = re.compile(
    rb"Error parsing text-format tensorflow\.XlaSerializedCacheEntry"
    rb"|Target machine feature \+prefer-no-(gather|scatter) is not +supported")


def is_command(orig_argv=None):
  """Whether this process is `python ... -m cyclegan.<command>`."""
  argv = sys.orig_argv if orig_argv is None else orig_argv
  return any(a == "-m" and b.startswith("cyclegan.") for a, b in zip(argv, argv[1:]))


def _verbosity(argv):
  """The value of the last --verbosity/-v in argv (absl's flag), 0 if absent or not a number."""
  value = "0"
  for i, arg in enumerate(argv):
    name, eq, rest = arg.partition("=")
    if name in ("--verbosity", "-v"):
      value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else "0")
  try:
    return int(value)
  except ValueError:
    return 0


def tf_logs_wanted(verbosity):
  """Whether the person asked for TensorFlow's own INFO lines, by flag or by TF's env var."""
  return verbosity >= 1 or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


@contextlib.contextmanager
def _dropped_from_stderr(notices):
  """Drops the lines matching `notices` from fd 2 (C++ writes there); every other line goes on
  as it comes, so a long block (an XLA compile) shows its output, and a crash's reason, live."""
  sys.stderr.flush()
  saved = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def forward():
    with os.fdopen(read_end, "rb") as lines:
      for line in lines:
        if not notices.search(line):
          os.write(saved, line)

  forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
  forwarder.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # Closes the pipe's last write end: the forwarder reads to its end.
    forwarder.join()
    os.close(saved)


def before_tensorflow():
  """For a command, hides TF's C++ INFO/WARNING: it must run before TensorFlow is imported."""
  if not is_command() or tf_logs_wanted(_verbosity(sys.argv[1:])):
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if importlib.util.find_spec("tensorflow") is not None:
    with _dropped_from_stderr(_IMPORT_NOTICES):
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import


def _hidden_with_tf_info(notices):
  """A block in which `notices` are dropped where TF's own INFO is hidden (a command not asked
  for it, or TF_CPP_MIN_LOG_LEVEL 1 and up)."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
    return contextlib.nullcontext()
  return _dropped_from_stderr(notices)


def litert_notices_hidden():
  return _hidden_with_tf_info(_LITERT_NOTICES)


def xla_cache_notices_hidden():
  return _hidden_with_tf_info(_XLA_CACHE_NOTICES)


class _NotTensorFlowInfo(logging.Filter):
  """TF also logs its INFO through absl's logger, the one our own progress lines use."""

  def __init__(self):
    super().__init__()
    specs = [importlib.util.find_spec(name) for name in ("tensorflow", "keras")]
    self._dirs = tuple(os.path.join(d, "") for s in specs if s and s.submodule_search_locations
                       for d in s.submodule_search_locations)

  def filter(self, record):
    return record.levelno >= logging.WARNING or not record.pathname.startswith(self._dirs)


def hide_tf_info(verbosity):
  """After flags are parsed: TF's Python INFO lines go, unless `verbosity` or the env asks."""
  if tf_logs_wanted(verbosity):
    return
  logging.getLogger("tensorflow").setLevel(logging.WARNING)
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _NotTensorFlowInfo) for f in absl_logger.filters):
    absl_logger.addFilter(_NotTensorFlowInfo())
