"""Atomic writes: an error, a kill or Ctrl-C never leaves a half-written file or folder under
its final name, so a re-run redoes it instead of taking it for done."""

import contextlib
import os
import shutil


@contextlib.contextmanager
def atomic_path(path):
  """Yields a path beside `path` for the block to write a file or a folder at (for libraries
  that want a path: tf.saved_model.save, PyAV); moved onto `path` if the block succeeds,
  removed if it fails.

  The temporary name is `.tmp-<name>`: hidden (folder scans skip it), never a number (TF
  Serving ignores it beside version folders), and with the name's extension (PyAV picks the
  container by it). A leftover of a killed run is removed first. As os.replace does, a file
  replaces an existing file; a folder only an absent or empty one.
  """
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  temporary = os.path.join(folder, f".tmp-{name}")
  _remove(temporary)
  try:
    yield temporary
    os.replace(temporary, path)
  except BaseException:
    _remove(temporary)
    raise


@contextlib.contextmanager
def atomic_open(path, mode="w"):
  """open(), writing to a temporary file that replaces `path` once closed without error."""
  with atomic_path(path) as temporary, open(temporary, mode) as f:
    yield f


def _remove(path):
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.unlink(path)
