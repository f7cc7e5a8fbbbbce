"""Reads PyTorch state dicts (.pth) without PyTorch, running no code from the file.

A .pth holds a pickle of the dict whose tensors point at raw storages: in a zip (`torch.save`
since 1.6: `<dir>/data.pkl`, storages at `<dir>/data/<key>`) or, in the legacy format of the
published CycleGAN weights, as consecutive pickles followed by the storages' bytes. The
unpickler here resolves only the few names a state dict needs (an ordered dict, the tensor
rebuild functions, the storage types) and refuses every other one, so that a crafted file
cannot run anything.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_STORAGE_BYTES = 2**31  # a full-size generator's largest weight is 2.4 MB: a bound on bombs
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                   "BoolStorage": np.bool_}


class PthError(ValueError):
  """Not a state dict this reader can take; the message says what was found."""


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage the file declares (a persistent id), as a 1-D array: the only thing tensors
  are rebuilt on, so that a crafted pickle cannot hand the rebuild an array of its own."""

  def __init__(self, array):
    self.array = array


def _strided(storage, offset, size, stride):
  """A tensor's view of its storage (a 1-D array), as an array of its own. A view reaching
  outside its storage, or with more elements than it (a crafted file), is refused, not read."""
  size, stride = tuple(size), tuple(stride)
  if not all(type(n) is int and n >= 0 for n in (offset, *size, *stride)) or \
      len(size) != len(stride):
    raise PthError(f"a tensor with shape {size[:8]}, strides {stride[:8]}: not a tensor's layout")
  count = int(np.prod(size, dtype=object))
  if count == 0:
    return np.zeros(size, storage.dtype)
  if count > len(storage) or offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(storage):
    raise PthError(f"a tensor of shape {size[:8]} does not fit its storage")
  view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         tuple(s * storage.itemsize for s in stride))
  return np.array(view)


class _LegacyStorage:
  """A storage of the legacy format, whose bytes follow the pickle: tensors on it are built
  once those are read (a function of {key: 1-D array})."""

  def __init__(self, key, view):
    self.key, self.view = key, view

  def array(self, data):
    if self.view is None:
      return data[self.key]
    _, offset, size = self.view  # (view key, element offset, elements) into the root storage
    return data[self.key][offset:offset + size]


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor(_v2), on a storage the file declared."""
  if isinstance(storage, _LegacyStorage):
    return lambda data: _strided(storage.array(data), offset, size, stride)
  if not isinstance(storage, _Storage):
    raise PthError("a tensor rebuilt on something that is not one of the file's storages")
  return _strided(storage.array, offset, size, stride)


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor}


class _Unpickler(pickle.Unpickler):
  """Resolves only the names of a plain state dict; storages come from `storage(key, type)`."""

  def __init__(self, data, storage):
    super().__init__(io.BytesIO(data) if isinstance(data, bytes) else data)
    self._storage = storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise PthError(f"it holds {module}.{name}, which a state dict of tensors never does; "
                   "refused (only tensors and ordered dicts are read)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and
            isinstance(pid[1], _StorageType)):
      raise PthError(f"an unexpected reference ({type(pid).__name__}) in the pickle")
    return self._storage(pid)


def _load_zip(archive):
  names = archive.namelist()
  pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
  if not pickles:
    raise PthError("a zip without data.pkl: not a PyTorch file")
  root = pickles[0][:-len("data.pkl")]
  if root + "byteorder" in names and archive.read(root + "byteorder") != b"little":
    raise PthError("big-endian storages are not supported")
  loaded = {}

  def storage(pid):
    _, storage_type, key, _, _ = pid[:5]
    if key not in loaded:
      if archive.getinfo(f"{root}data/{key}").file_size > MAX_STORAGE_BYTES:
        raise PthError(f"storage {key} is larger than any generator's")
      loaded[key] = _Storage(np.frombuffer(archive.read(f"{root}data/{key}"), storage_type.dtype))
    return loaded[key]

  return _Unpickler(archive.read(pickles[0]), storage).load()


def _load_legacy(f):
  """torch's pre-1.6 format: magic, protocol, system info, the dict, storage keys, storages."""
  dtypes = {}

  def storage(pid):
    _, storage_type, key, _, _, view = (pid + (None,))[:6]
    dtypes[key] = storage_type.dtype
    return _LegacyStorage(key, view)

  if _Unpickler(f, storage).load() != LEGACY_MAGIC:
    raise PthError("neither a zip nor PyTorch's legacy format: not a .pth file")
  _Unpickler(f, storage).load()  # protocol version
  info = _Unpickler(f, storage).load()
  if isinstance(info, dict) and not info.get("little_endian", True):
    raise PthError("big-endian storages are not supported")
  state = _Unpickler(f, storage).load()
  data = {}
  for key in _Unpickler(f, storage).load():
    (count,) = struct.unpack("<q", f.read(8))
    if not 0 <= count * dtypes[key].itemsize <= MAX_STORAGE_BYTES:
      raise PthError(f"storage {key} claims {count} elements: not a generator's")
    raw = f.read(count * dtypes[key].itemsize)
    if len(raw) != count * dtypes[key].itemsize:
      raise PthError("the file ends before its tensors do: truncated")
    data[key] = np.frombuffer(raw, dtypes[key])
  if not isinstance(state, dict):
    return state
  return collections.OrderedDict((k, v(data) if callable(v) else v) for k, v in state.items())


def load(source):
  """{key: numpy array} from a .pth path or bytes (a zip or the legacy format)."""
  if isinstance(source, bytes):
    data = source
  else:
    with open(source, "rb") as f:
      data = f.read()
  if data.lstrip()[:1] == b"<":
    raise PthError("an HTML page, not a checkpoint (a server's error or login page?)")
  if data[:2] == b"PK" and not zipfile.is_zipfile(io.BytesIO(data)):
    raise PthError("an incomplete zip: truncated (an interrupted download?)")
  try:
    if zipfile.is_zipfile(io.BytesIO(data)):
      state = _load_zip(zipfile.ZipFile(io.BytesIO(data)))
    else:
      state = _load_legacy(io.BytesIO(data))
  except PthError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (find_class already refuses code)
    raise PthError(f"not a readable PyTorch state dict ({type(e).__name__}: {str(e)[:120]})") from e
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
    raise PthError(f"it holds a {type(state).__name__}, not a state dict of tensors")
  return dict(state)
