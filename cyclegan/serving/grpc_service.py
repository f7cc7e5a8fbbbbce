"""TF Serving's gRPC API over the same models: PredictionService.Predict and GetModelMetadata,
ModelService.GetModelStatus. Needs the `tensorflow-serving-api` package for the protos; install it
with `pip install --no-deps tensorflow-serving-api` (without --no-deps it pulls in the full,
GPU-sized `tensorflow` package next to tensorflow-cpu).
"""

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from cyclegan import export
from cyclegan.serving import errors


class _Models:
  def __init__(self, runners, check_inputs):
    self.runners = runners
    self.check_inputs = check_inputs

  async def runner(self, model_spec, context):
    runner = self.runners.get(model_spec.name)
    if runner is None:
      await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model_spec.name!r} is not served "
                          f"here; models: {', '.join(sorted(self.runners))}")
    if model_spec.HasField("version") and model_spec.version.value != runner.version:
      await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model_spec.name!r} has no version "
                          f"{model_spec.version.value}; served: {runner.version}")
    return runner


def _inputs(request, signature):
  """{name: np.ndarray} of the request's tensors, checked against the signature."""
  if set(request.inputs) != set(signature.inputs):
    raise errors.RequestError(f"inputs {sorted(request.inputs)} do not match the signature's "
                            f"{sorted(signature.inputs)}")
  inputs = {}
  for name, proto in request.inputs.items():
    spec = signature.inputs[name]
    if proto.dtype != spec.dtype.as_datatype_enum:
      raise errors.RequestError(f"input {name!r}: got {tf.dtypes.as_dtype(proto.dtype).name}, "
                              f"the signature wants {spec.dtype.name}")
    array = tf.make_ndarray(proto)
    if not spec.shape.is_compatible_with(array.shape):
      raise errors.RequestError(f"input {name!r}: shape {list(array.shape)} does not match the "
                              f"signature's {spec.shape}")
    inputs[name] = array
  return inputs


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Models):

  async def Predict(self, request, context):
    runner = await self.runner(request.model_spec, context)
    name = request.model_spec.signature_name or export.BYTES_SIGNATURE
    signature = runner.signatures.get(name)
    if signature is None:
      await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no signature {name!r}; the model "
                          f"has: {', '.join(sorted(runner.signatures))}")
    try:
      inputs = _inputs(request, signature)
      self.check_inputs(inputs, signature)
      outputs = await runner.run(name, inputs)
    except errors.RequestError as e:
      await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except errors.TooLarge as e:
      await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = runner.name
    response.model_spec.version.value = runner.version
    response.model_spec.signature_name = name
    for key, value in outputs.items():
      response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response

  async def GetModelMetadata(self, request, context):
    runner = await self.runner(request.model_spec, context)
    if list(request.metadata_field) != ["signature_def"]:
      await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          'metadata_field must be ["signature_def"]')
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, proto in runner.signature_defs.items():
      signature_map.signature_def[name].CopyFrom(proto)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = runner.name
    response.model_spec.version.value = runner.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Models):

  async def GetModelStatus(self, request, context):
    runner = await self.runner(request.model_spec, context)
    response = get_model_status_pb2.GetModelStatusResponse()
    status = response.model_version_status.add()
    status.version = runner.version
    status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return response


async def start(address, runners, check_inputs):
  """A started grpc.aio server on `address` (host:port) for the runners."""
  server = grpc.aio.server()
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionService(runners, check_inputs), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(
      ModelService(runners, check_inputs), server)
  try:
    server.add_insecure_port(address)
  except RuntimeError as e:
    raise OSError(f"cannot listen on {address} for gRPC ({e}); pick another --grpc_port") from None
  await server.start()
  return server
