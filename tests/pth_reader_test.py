"""Reading .pth files without PyTorch: equal to torch.load, and nothing in the file runs."""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from cyclegan import pth_reader
from conftest import load_tool

torch = pytest.importorskip("torch", reason="PyTorch (the [torch] extra) writes the files")
torch_reference = load_tool("torch_reference")


@pytest.mark.parametrize("legacy", [False, True])
def test_equals_torch_load_in_both_formats(tmp_path, legacy):
  """The zip of torch.save and the legacy format of the published CycleGAN files, with a CUT
  generator's buffers, a non-contiguous tensor, other dtypes and a scalar."""
  state = collections.OrderedDict(
      (f"model.{k}", v) for k, v in torch_reference.resnet_generator(8, 5, antialias=True)
      .state_dict().items())
  state["model.1.weight"] = state["model.1.weight"].transpose(0, 1).contiguous().transpose(0, 1)
  state.update(half=torch.randn(3, 2).half(), steps=torch.tensor(7), flags=torch.ones(2).bool())
  path = tmp_path / "g.pth"
  torch.save(state, path, _use_new_zipfile_serialization=not legacy)
  got, want = pth_reader.load(str(path)), torch.load(path)
  assert list(got) == list(want)
  for key, tensor in want.items():
    assert got[key].dtype == tensor.numpy().dtype and got[key].shape == tuple(tensor.shape)
    np.testing.assert_array_equal(got[key], tensor.numpy())


class _Payload:
  def __reduce__(self):
    return (os.system, ("touch /tmp/pth_reader_pwned",))


class _OwnStorage:
  """A tensor rebuilt on a nested list, whose array would read past its buffer."""

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2,  # noqa: SLF001
            ([[]] * 1000, 0, (1000,), (1,), False, collections.OrderedDict()))


@pytest.mark.parametrize("case,message", [
    ("pickled code", "refused"), ("pickled code in a zip", "refused"), ("html", "HTML page"),
    ("truncated zip", "truncated"), ("truncated legacy", "truncated"),
    ("a list", "not a state dict"), ("strides outside the storage", "does not fit"),
    ("zero strides", "does not fit"), ("an array of its own as storage", "file's storages")])
def test_refuses_what_is_not_a_state_dict_in_one_line(tmp_path, case, message):
  path = tmp_path / "bad.pth"
  state = {"w": torch.arange(6.0).reshape(2, 3)}
  if case == "pickled code":
    path.write_bytes(pickle.dumps({"w": _Payload()}))
  elif case in ("pickled code in a zip", "an array of its own as storage"):
    torch.save({"w": torch.zeros(1), "x": 1}, path)  # then the pickle swapped for a payload
    payload = _Payload() if case.startswith("pickled") else _OwnStorage()
    with zipfile.ZipFile(path) as z:
      members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
      for name, data in members.items():
        z.writestr(name, pickle.dumps({"w": payload}) if name.endswith("data.pkl") else data)
  elif case == "zero strides":
    torch.save({"w": torch.zeros(1).expand(2**20, 2**20)}, path)
  elif case == "html":
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
  elif case.startswith("truncated"):
    torch.save(state, path, _use_new_zipfile_serialization=case == "truncated zip")
    path.write_bytes(path.read_bytes()[:-40])
  elif case == "a list":
    torch.save([torch.zeros(1)], path)
  else:
    torch.save(state, path, _use_new_zipfile_serialization=False)
    # The pickled stride (3, 1) of the 2x3 tensor (BININT1 3, BININT1 1, TUPLE2) made (30, 1).
    data = path.read_bytes()
    assert data.count(b"K\x03K\x01\x86") == 1
    path.write_bytes(data.replace(b"K\x03K\x01\x86", b"K\x1eK\x01\x86"))
  with pytest.raises(pth_reader.PthError, match=message):
    pth_reader.load(str(path))
  assert not os.path.exists("/tmp/pth_reader_pwned")
