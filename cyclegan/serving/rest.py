"""TF Serving's REST predict format, to and from numpy: one client works against both servers.

Request:  {"signature_name": "...", "instances": [...]}  (row format: one entry per example) or
          {"signature_name": "...", "inputs": ...}        (columnar: one value per input name).
Response: {"predictions": [...]} or {"outputs": ...}, mirroring the request's format.
Binary strings travel as {"b64": "..."}: inputs of type string accept it, and string outputs
whose name ends in "_bytes" are written that way (as TF Serving does).
"""

import base64
import binascii

import numpy as np
import tensorflow as tf

from cyclegan.serving.errors import RequestError


def _decode_b64(value):
  if isinstance(value, dict):
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
      raise RequestError('binary values must be {"b64": "<base64 string>"}')
    try:
      return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
      raise RequestError("a b64 value is not valid base64") from None
  if isinstance(value, list):
    return [_decode_b64(v) for v in value]
  if isinstance(value, str):
    return value.encode()
  raise RequestError(f"expected a string or {{\"b64\": ...}}, got {type(value).__name__}")


def _to_array(name, value, spec):
  """One input's JSON value -> np.ndarray of the spec's dtype and a compatible shape."""
  if spec.dtype == tf.string:
    value = _decode_b64(value)
    array = np.array(value, dtype=object)
    if array.dtype != object or (array.ndim and any(not isinstance(v, bytes)
                                                    for v in array.reshape(-1))):
      raise RequestError(f"input {name!r}: values are not all strings of one shape")
  else:
    try:
      array = np.asarray(value)
    except ValueError:
      raise RequestError(f"input {name!r}: nested lists of different lengths "
                         "(all examples must have the same shape)") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or
                                     array.dtype == bool):
      raise RequestError(f"input {name!r}: expected numbers, got {array.dtype} values")
    dtype = spec.dtype.as_numpy_dtype
    if np.issubdtype(dtype, np.integer) and array.size:
      if not np.issubdtype(array.dtype, np.integer) and not np.all(np.mod(array, 1) == 0):
        raise RequestError(f"input {name!r} is {spec.dtype.name}: got non-integer values")
      info = np.iinfo(dtype)
      if array.min() < info.min or array.max() > info.max:
        raise RequestError(f"input {name!r} is {spec.dtype.name}: values must lie in "
                           f"[{info.min}, {info.max}]")
    array = array.astype(dtype)
  expected = spec.shape
  if expected.rank is not None:
    if array.ndim != expected.rank or not expected.is_compatible_with(array.shape):
      raise RequestError(f"input {name!r}: got shape {list(array.shape)}, the signature wants "
                         f"{_shape_str(expected)} (first dimension: examples)")
  return array


def _shape_str(shape):
  return "[" + ", ".join("any" if d is None else str(d) for d in shape.as_list()) + "]"


def parse_predict(body, signature):
  """(inputs {name: np.ndarray}, row_format) of a parsed JSON body, checked against the signature."""
  if not isinstance(body, dict):
    raise RequestError('the body must be a JSON object with "instances" or "inputs"')
  if ("instances" in body) == ("inputs" in body):
    raise RequestError('the body must have exactly one of "instances" (row format) or '
                       '"inputs" (columnar format)')
  names = list(signature.inputs)
  if "instances" in body:
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
      raise RequestError('"instances" must be a non-empty list')
    columns = {name: [] for name in names}
    for instance in instances:
      if len(names) == 1 and not (isinstance(instance, dict) and names[0] in instance):
        columns[names[0]].append(instance)
        continue
      if not isinstance(instance, dict) or set(instance) != set(names):
        raise RequestError(f"each instance must be an object with the inputs {names}")
      for name in names:
        columns[name].append(instance[name])
    inputs = {name: _to_array(name, columns[name], signature.inputs[name])
              for name in names}
    return inputs, True
  value = body["inputs"]
  if len(names) == 1 and not (isinstance(value, dict) and set(value) == set(names)):
    value = {names[0]: value}
  if not isinstance(value, dict) or set(value) != set(names):
    raise RequestError(f'"inputs" must be an object with the inputs {names}')
  inputs = {name: _to_array(name, value[name], signature.inputs[name]) for name in names}
  if len({len(v) for v in inputs.values()}) > 1:
    raise RequestError("all inputs must have the same number of examples")
  return inputs, False


def _to_json(name, array):
  if array.dtype == object:  # tf.string
    if name.endswith("_bytes"):
      return _map_nested(array, lambda b: {"b64": base64.b64encode(b).decode("ascii")})
    return _map_nested(array, lambda b: b.decode("utf-8", "replace"))
  return array.tolist()


def _map_nested(array, fn):
  if isinstance(array, np.ndarray):
    return fn(array.item()) if array.ndim == 0 else [_map_nested(a, fn) for a in array]
  return fn(array)


def format_predict(outputs, row_format):
  """The JSON response for {name: np.ndarray} outputs, in the request's format."""
  if row_format:
    if len(outputs) == 1:
      (name, array), = outputs.items()
      return {"predictions": _to_json(name, array)}
    values = {name: _to_json(name, array) for name, array in outputs.items()}
    count = len(next(iter(outputs.values())))
    return {"predictions": [{name: values[name][i] for name in outputs} for i in range(count)]}
  if len(outputs) == 1:
    (name, array), = outputs.items()
    return {"outputs": _to_json(name, array)}
  return {"outputs": {name: _to_json(name, array) for name, array in outputs.items()}}
