"""Shared model runner: requests that queue together run as one batch, and each gets its own rows."""

import asyncio
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan import export
from cyclegan import models
from cyclegan.serving import errors
from cyclegan.serving import runner as runner_lib


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  generator = models.resnet_generator(ngf=4, n_blocks=1)
  return export.save(generator, str(tmp_path_factory.mktemp("runner") / "a2b"))


def _png(seed, size):
  buffer = io.BytesIO()
  Image.fromarray(np.random.RandomState(seed).randint(0, 256, size + (3,), np.uint8)).save(
      buffer, "PNG")
  return buffer.getvalue()


def test_signatures_and_metadata(model_path):
  runner = runner_lib.ModelRunner("a2b", model_path)
  assert runner.version == 1 and runner.path == model_path
  assert set(runner.signatures) == {"serving_default", "translate_uint8", "translate_float",
                                    "translate_uint8_bf16"}
  assert runner.signatures["serving_default"].inputs["image_bytes"].dtype == tf.string
  assert set(runner.signature_defs) == set(runner.signatures) | {"__saved_model_init_op"}
  assert runner.signature_defs["serving_default"].method_name == "tensorflow/serving/predict"
  runner.close()


def test_queued_requests_are_batched_and_answered_with_their_own_rows(model_path):
  runner = runner_lib.ModelRunner("a2b", model_path, max_batch=4)
  model = tf.saved_model.load(model_path)
  rng = np.random.RandomState(0)
  same = [rng.randint(0, 256, [1, 16, 16, 3]).astype(np.uint8) for _ in range(6)]
  other = rng.randint(0, 256, [1, 12, 20, 3]).astype(np.uint8)

  async def all_at_once():
    requests = [runner.run("translate_uint8", {"images": x}) for x in same + [other]]
    return await asyncio.gather(*requests)

  results = asyncio.run(all_at_once())
  for x, result in zip(same + [other], results):
    expected = model.signatures["translate_uint8"](images=tf.constant(x))["images"].numpy()
    assert result["images"].shape == x.shape
    assert np.abs(result["images"].astype(int) - expected).max() <= 1
  # All seven are queued before the model's worker first runs: the six 16x16 requests run as
  # batches of at most 4 rows; the 12x20 one cannot stack with them and runs alone.
  assert runner.batch_sizes == {4: 1, 2: 1, 1: 1}
  runner.close()


def test_a_bad_input_in_a_batch_fails_only_its_own_request(model_path):
  runner = runner_lib.ModelRunner("a2b", model_path)
  good = [_png(i, (10, 14)) for i in range(3)]

  async def together():
    requests = [runner.run("serving_default", {"image_bytes": np.array([b], dtype=object)})
                for b in [good[0], good[1], b"not an image", good[2]]]
    return await asyncio.gather(*requests, return_exceptions=True)

  results = asyncio.run(together())
  assert isinstance(results[2], errors.ModelInputError)
  assert "Unknown image file format" in str(results[2])
  for result in results[:2] + results[3:]:
    assert result["translated_size"].tolist() == [[10, 14]]
  assert max(runner.batch_sizes) >= 2  # The three after the first were queued together.
  runner.close()


def test_cpu_kernels_off_runs_the_weights_traced_again_under_the_same_signatures(model_path):
  """Metadata stays the export's; calls run the re-traced graphs (tf.pad's MirrorPad where the
  saved graph gathers), within rounding of the saved ones, with the same input errors."""
  runner = runner_lib.ModelRunner("a2b", model_path, cpu_kernels="off")
  model = tf.saved_model.load(model_path)
  assert set(runner.signatures) == set(model.signatures)
  graph = runner._functions["translate_uint8"].graph.as_graph_def()
  assert "MirrorPad" in {n.op for f in graph.library.function for n in f.node_def}
  x = np.random.RandomState(3).randint(0, 256, (2, 12, 20, 3), np.uint8)
  got = runner.call("translate_uint8", {"images": x})["images"].astype(int)
  want = model.signatures["translate_uint8"](images=tf.constant(x))["images"].numpy()
  assert np.abs(got - want).max() <= 2
  with pytest.raises(errors.ModelInputError, match="Unknown image file format"):
    runner.call("serving_default", {"image_bytes": np.array([b"not an image"], dtype=object)})
  runner.close()
