"""A loaded SavedModel that many concurrent requests share.

Calls run on the model's own thread, off the event loop, one at a time so each gets all cores.
Requests that arrive while the model is busy wait in a queue; when it frees up, waiting requests
for the same signature whose inputs stack (same dtypes and per-example shapes) run as one batch.
A batch adds no waiting time: it only forms from requests that were queued anyway.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from cyclegan import export
from cyclegan.serving.errors import ModelInputError


@dataclasses.dataclass(frozen=True)
class Signature:
  name: str
  inputs: dict  # name -> tf.TensorSpec
  outputs: dict  # name -> tf.TensorSpec


def signature_defs(path):
  """{name: SignatureDef proto} of the SavedModel, as TF Serving's metadata reports them."""
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  defs = proto.meta_graphs[0].signature_def
  return dict(defs)  # With __saved_model_init_op, as TF Serving lists it.


def _op_error_message(message):
  """The line of a TensorFlow op error that says what is wrong, without graph locations."""
  noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[", "File ")
  for line in message.splitlines():
    line = line.strip().split(" [Op:")[0].split("\t [[")[0].strip()
    if line and not line.startswith(noise):
      return line
  return message.strip().splitlines()[0]


class ModelRunner:
  """One model version: signatures, metadata, and batched calls off the event loop.

  cpu_kernels: the graphs the signatures run (export.signatures); metadata is the export's.
  """

  def __init__(self, name, path, max_batch=8, cpu_kernels="auto"):
    self.name = name
    self.path, self.version = export.resolve_version(path)
    self.max_batch = max_batch
    self.model = tf.saved_model.load(self.path)
    self._functions = export.signatures(self.model, cpu_kernels)
    self.signatures = {}
    for key, fn in self.model.signatures.items():
      self.signatures[key] = Signature(key, dict(fn.structured_input_signature[1]),
                                       dict(fn.structured_outputs))
    self.signature_defs = signature_defs(self.path)
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
    self._queue = None
    self._worker = None
    self.batch_sizes = collections.Counter()  # requests per model call: shows batching works

  def call(self, signature, inputs):
    """Runs one signature synchronously; {name: np.ndarray} -> {name: np.ndarray}."""
    fn = self._functions[signature]
    try:
      outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
      raise ModelInputError(_op_error_message(e.message)) from None
    return {k: v.numpy() for k, v in outputs.items()}

  async def run(self, signature, inputs):
    """Queues one request; returns its outputs when the model has run it (maybe in a batch)."""
    if self._worker is None:
      self._queue = asyncio.Queue()
      self._worker = asyncio.get_running_loop().create_task(self._serve_queue())
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((signature, inputs, future))
    return await future

  def close(self):
    self._executor.shutdown(wait=True)

  @staticmethod
  def _key(signature, inputs):
    return signature, tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(inputs.items()))

  async def _serve_queue(self):
    loop = asyncio.get_running_loop()
    waiting = collections.deque()
    while True:
      if not waiting:
        waiting.append(await self._queue.get())
      while not self._queue.empty():
        waiting.append(self._queue.get_nowait())
      batch = self._take_batch(waiting)
      self.batch_sizes[len(batch)] += 1
      try:
        results = await loop.run_in_executor(self._executor, self._call_batch, batch)
      except Exception as e:  # Handed to the waiting requests, which answer their clients.
        results = [e] * len(batch)
      for (_, _, future), result in zip(batch, results):
        if future.done():  # The client went away.
          continue
        if isinstance(result, BaseException):
          future.set_exception(result)
        else:
          future.set_result(result)

  def _take_batch(self, waiting):
    """The first waiting request and those after it that stack with it, up to max_batch rows."""
    first = waiting.popleft()
    key = self._key(first[0], first[1])
    rows = len(next(iter(first[1].values())))
    batch, rest = [first], collections.deque()
    while waiting:
      item = waiting.popleft()
      n = len(next(iter(item[1].values())))
      if rows + n <= self.max_batch and self._key(item[0], item[1]) == key:
        batch.append(item)
        rows += n
      else:
        rest.append(item)
    waiting.extend(rest)
    return batch

  def _call_batch(self, batch):
    """Outputs (or an exception) per request. A failing batch is retried request by request,
    so one client's bad input does not fail the others'."""
    signature = batch[0][0]
    if len(batch) == 1:
      try:
        return [self.call(signature, batch[0][1])]
      except Exception as e:
        return [e]
    names = list(batch[0][1])
    sizes = [len(item[1][names[0]]) for item in batch]
    stacked = {k: np.concatenate([item[1][k] for item in batch]) for k in names}
    try:
      outputs = self.call(signature, stacked)
    except ModelInputError:
      return [self._call_batch([item])[0] for item in batch]
    splits = np.cumsum(sizes)[:-1]
    per_output = {k: np.split(v, splits) for k, v in outputs.items()}
    return [{k: per_output[k][i] for k in outputs} for i in range(len(batch))]
