"""Atomic writes: the target appears whole or not at all, and no temporary is left behind."""

import os

import pytest

from cyclegan import files


class Boom(Exception):
  pass


def test_a_file_written_in_the_block_is_moved_into_place(tmp_path):
  target = tmp_path / "new" / "out.txt"
  with files.atomic_open(target) as f:
    f.write("done")
    assert not target.exists()  # Only once the block succeeds.
  assert target.read_text() == "done"
  assert os.listdir(target.parent) == ["out.txt"]


def test_a_folder_written_at_the_path_is_moved_into_place(tmp_path):
  with files.atomic_path(tmp_path / "1") as temporary:
    assert not os.path.basename(temporary).isdigit()  # TF Serving skips it.
    os.makedirs(os.path.join(temporary, "variables"))
    open(os.path.join(temporary, "saved_model.pb"), "wb").close()
  assert sorted(os.listdir(tmp_path / "1")) == ["saved_model.pb", "variables"]
  assert os.listdir(tmp_path) == ["1"]


@pytest.mark.parametrize("interrupt", [Boom, KeyboardInterrupt])
def test_a_failed_block_leaves_neither_target_nor_temporary(tmp_path, interrupt):
  with pytest.raises(interrupt):
    with files.atomic_open(tmp_path / "out.bin", "wb") as f:
      f.write(b"half")
      raise interrupt
  with pytest.raises(Boom):
    with files.atomic_path(tmp_path / "folder") as temporary:
      os.makedirs(os.path.join(temporary, "inside"))
      raise Boom
  assert os.listdir(tmp_path) == []


def test_an_existing_target_is_replaced_only_on_success(tmp_path):
  target = tmp_path / "config.json"
  target.write_text("old")
  with pytest.raises(Boom):
    with files.atomic_open(target) as f:
      f.write("half")
      raise Boom
  assert target.read_text() == "old"
  with files.atomic_open(target) as f:
    f.write("new")
  assert target.read_text() == "new"
  assert os.listdir(tmp_path) == ["config.json"]


def test_a_killed_runs_leftover_is_cleared_and_the_extension_kept(tmp_path):
  (tmp_path / ".tmp-clip.mp4").write_bytes(b"stale half video")
  with files.atomic_path(tmp_path / "clip.mp4") as temporary:
    assert temporary.endswith(".mp4") and not os.path.exists(temporary)
    with open(temporary, "wb") as f:
      f.write(b"video")
  assert os.listdir(tmp_path) == ["clip.mp4"]
