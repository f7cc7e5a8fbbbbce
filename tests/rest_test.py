"""TF Serving's REST format: what its docs specify, in both directions, and every malformed body."""

import base64

import numpy as np
import pytest
import tensorflow as tf

from cyclegan.serving import errors
from cyclegan.serving import rest
from cyclegan.serving.runner import Signature

BYTES = Signature("serving_default", {"image_bytes": tf.TensorSpec([None], tf.string)},
                  {"translated_bytes": tf.TensorSpec([None], tf.string),
                   "translated_size": tf.TensorSpec([None, 2], tf.int32)})
UINT8 = Signature("translate_uint8", {"images": tf.TensorSpec([None, None, None, 3], tf.uint8)},
                  {"images": tf.TensorSpec([None, None, None, 3], tf.uint8)})
TWO = Signature("two", {"x": tf.TensorSpec([None, 2], tf.float32),
                        "y": tf.TensorSpec([None], tf.int32)}, {})


def _b64(data):
  return {"b64": base64.b64encode(data).decode()}


def test_row_format_single_input_takes_bare_values_or_named_objects():
  inputs, row = rest.parse_predict({"instances": [_b64(b"\x00a"), {"image_bytes": _b64(b"b")}]},
                                   BYTES)
  assert row
  assert inputs["image_bytes"].tolist() == [b"\x00a", b"b"]


def test_row_format_several_inputs_and_columnar():
  inputs, row = rest.parse_predict({"instances": [{"x": [1, 2], "y": 3}, {"x": [4, 5], "y": 6}]},
                                   TWO)
  assert row and inputs["x"].dtype == np.float32 and inputs["y"].dtype == np.int32
  np.testing.assert_array_equal(inputs["x"], [[1, 2], [4, 5]])
  inputs, row = rest.parse_predict({"inputs": {"x": [[1, 2]], "y": [3]}}, TWO)
  assert not row
  np.testing.assert_array_equal(inputs["y"], [3])
  inputs, _ = rest.parse_predict({"inputs": [[[[1, 2, 3]]]]}, UINT8)
  assert inputs["images"].shape == (1, 1, 1, 3) and inputs["images"].dtype == np.uint8


def test_outputs_follow_the_request_format_and_bytes_names_get_b64():
  outputs = {"translated_bytes": np.array([b"\x89PNG", b"x"], dtype=object),
             "translated_size": np.array([[2, 3], [4, 5]], np.int32)}
  assert rest.format_predict(outputs, True) == {"predictions": [
      {"translated_bytes": _b64(b"\x89PNG"), "translated_size": [2, 3]},
      {"translated_bytes": _b64(b"x"), "translated_size": [4, 5]}]}
  assert rest.format_predict(outputs, False) == {"outputs": {
      "translated_bytes": [_b64(b"\x89PNG"), _b64(b"x")],
      "translated_size": [[2, 3], [4, 5]]}}
  single = {"images": np.zeros([1, 1, 1, 3], np.uint8)}
  assert rest.format_predict(single, True) == {"predictions": [[[[0, 0, 0]]]]}
  assert rest.format_predict({"label": np.array([b"zebra"], dtype=object)}, False) == {
      "outputs": ["zebra"]}


@pytest.mark.parametrize("body,signature,message", [
    ([1], UINT8, "JSON object"),
    ({}, UINT8, "exactly one of"),
    ({"instances": [], }, UINT8, "non-empty list"),
    ({"instances": [1], "inputs": [1]}, UINT8, "exactly one of"),
    ({"instances": [{"b64": "***"}]}, BYTES, "not valid base64"),
    ({"instances": [{"b64": "aGk=", "x": 1}]}, BYTES, '{"b64"'),
    ({"instances": [3]}, BYTES, "expected a string"),
    ({"instances": [[[[1, 2, 3]]], [[[1, 2]]]]}, UINT8, "different lengths"),
    ({"instances": [[[[1, 2, 256]]]]}, UINT8, "[0, 255]"),
    ({"instances": [[[[1, 2, 3.5]]]]}, UINT8, "non-integer"),
    ({"instances": [[[1, 2, 3]]]}, UINT8, "the signature wants [any, any, any, 3]"),
    ({"instances": [[[["a", "b", "c"]]]]}, UINT8, "expected numbers"),
    ({"instances": [{"x": [1, 2]}]}, TWO, "object with the inputs"),
    ({"inputs": {"x": [[1, 2]], "y": [3, 4]}}, TWO, "same number of examples"),
    ({"inputs": {"x": [[1, 2]]}}, TWO, "object with the inputs"),
])
def test_malformed_bodies_say_what_is_wrong(body, signature, message):
  with pytest.raises(errors.RequestError) as error:
    rest.parse_predict(body, signature)
  assert message in str(error.value)
