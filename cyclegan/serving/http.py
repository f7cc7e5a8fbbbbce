"""The HTTP app: TF Serving's REST API over the runners, plus :translate and an upload page.

Endpoints (the first three as in TF Serving, so one client works against both):
  POST /v1/models/<m>[/versions/<v>]:predict    {"instances": [...]} -> {"predictions": [...]}
  GET  /v1/models/<m>[/versions/<v>]            version status
  GET  /v1/models/<m>[/versions/<v>]/metadata   signatures
  POST /v1/models/<m>[/versions/<v>]:translate  an image file (raw body or multipart) -> the image
  GET  /                                        a page to upload a photo and see its translation
Errors are JSON {"error": "..."} with 400 (bad input), 404, 405, 408 (body stalled), 413 (too
large) or 500.
"""

import asyncio
import contextlib
import importlib.resources
import io
import json
import os
import socket
import threading

from absl import logging
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from cyclegan import export
from cyclegan import images as images_lib
from cyclegan import pretrained
from cyclegan import tiling
from cyclegan.serving import errors
from cyclegan.serving import rest
from cyclegan.serving import runner as runner_lib

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


class ModelName(Convertor):
  """Model names stop at ':' so that `<m>:predict` parses."""
  regex = "[^/:]+"

  def convert(self, value):
    return value

  def to_string(self, value):
    return value


register_url_convertor("model", ModelName())


def _error(status, message):
  return JSONResponse({"error": message}, status_code=status)


class IdleTimeoutProtocol(H11Protocol):
  """uvicorn's HTTP/1.1 protocol, with its keep-alive timeout also on a new connection that
  sends nothing (uvicorn starts that timer only after a response)."""

  def connection_made(self, transport):
    super().connection_made(transport)
    self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                        self.timeout_keep_alive_handler)


class BodyTimeout(Exception):
  """The client stopped sending its body."""


class ClientGone(Exception):
  """The client disconnected before its body was complete: there is nobody to answer."""


async def read_body(request, limit, timeout):
  """The request body, read while it arrives.

  TooLarge at once, reading nothing, when the declared Content-Length is over `limit`; when a
  body without one passes `limit`, the rest is read (up to 8x) and dropped, so that the
  client, still sending, gets the 413 instead of a broken connection. BodyTimeout when no
  byte arrives for `timeout` seconds; ClientGone when the client hangs up mid-body.
  """
  too_large = errors.TooLarge(f"the request body is larger than the server's limit of {limit} "
                              "bytes (--max_body_mb)")
  length = request.headers.get("content-length", "")
  if length.isdigit() and int(length) > limit:
    raise too_large
  chunks, size = [], 0
  stream = request.stream()
  while True:
    try:
      chunk = await asyncio.wait_for(anext(stream), timeout)
    except StopAsyncIteration:
      break
    except asyncio.TimeoutError:
      raise BodyTimeout(f"no part of the body arrived for {timeout:g} s (--body_timeout)") from None
    except ClientDisconnect:
      raise ClientGone() from None
    size += len(chunk)
    if size <= limit:
      chunks.append(chunk)
    elif size > 8 * limit:  # Stop reading; the connection closes.
      break
  if size > limit:
    raise too_large
  return b"".join(chunks)


async def uploaded_image(request, body):
  """The image bytes of a raw upload or of a multipart form's first file."""
  if not request.headers.get("content-type", "").startswith("multipart/form-data"):
    return body

  async def replay():
    return {"type": "http.request", "body": body, "more_body": False}

  form = await Request(request.scope, replay).form()
  for value in form.values():
    if hasattr(value, "read"):
      return await value.read()
  raise errors.RequestError("the multipart form has no file: send the image as a file field "
                          "(curl -F image=@photo.jpg) or as the raw body")


def encode_image(rgb, alpha, fmt):
  buffer = io.BytesIO()
  images_lib.save_image(buffer, rgb, alpha, fmt)
  return buffer.getvalue()


class Server:
  """The models and limits behind the routes."""

  def __init__(self, runners, max_body_bytes, max_pixels, precision="fp32", grpc_address=None,
               body_timeout=30.0, tile=1024, max_translate_pixels=None):
    self.runners = runners
    self.precision = precision
    self.tile = tile  # :translate tiles images of more pixels than tile^2, as cyclegan.translate
    self.max_translate_pixels = max_translate_pixels or max_pixels
    self._tilers = {}  # runner name -> tiling.SharedStatistics, built on first use
    self._tiling = threading.Lock()  # One tiled image at a time: memory stays bounded.
    self.body_timeout = body_timeout
    self.grpc_address = grpc_address
    self.max_body_bytes = max_body_bytes
    self.max_pixels = max_pixels
    self.translate_signature = export.UINT8_SIGNATURES[precision]
    self.page = importlib.resources.files("cyclegan.serving").joinpath("page.html").read_text().replace(
        "__MODELS__", json.dumps(sorted(runners)).replace("<", "\\u003c"))

  def check_inputs(self, inputs, signature):
    errors.check_pixels(inputs, signature, self.max_pixels)

  @contextlib.asynccontextmanager
  async def lifespan(self, app):
    """Starts the gRPC API beside HTTP, on the same event loop, when asked for."""
    if not self.grpc_address:
      yield
      return
    from cyclegan.serving import grpc_service  # Needs tensorflow-serving-api (optional).
    grpc_server = await grpc_service.start(self.grpc_address, self.runners, self.check_inputs)
    try:
      yield
    finally:
      await grpc_server.stop(grace=5)

  def runner(self, request):
    name = request.path_params["model"]
    runner = self.runners.get(name)
    if runner is None:
      raise HTTPException(404, f"model {name!r} is not served here; models: "
                          f"{', '.join(sorted(self.runners))}")
    version = request.path_params.get("version")
    if version is not None and version != runner.version:
      raise HTTPException(404, f"model {name!r} has no version {version}; served: "
                          f"{runner.version}")
    return runner

  async def page_route(self, request):
    return HTMLResponse(self.page)

  async def status(self, request):
    runner = self.runner(request)
    return JSONResponse({"model_version_status": [{
        "version": str(runner.version), "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]})

  async def metadata(self, request):
    runner = self.runner(request)
    return JSONResponse({
        "model_spec": {"name": runner.name, "signature_name": "", "version": str(runner.version)},
        "metadata": {"signature_def": {"signature_def": {
            name: json_format.MessageToDict(proto, preserving_proto_field_name=True)
            for name, proto in runner.signature_defs.items()}}}})

  async def predict(self, request):
    runner = self.runner(request)
    body = await read_body(request, self.max_body_bytes, self.body_timeout)
    try:
      parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise errors.RequestError(f"the body is not valid JSON: {e}") from None
    name = parsed.get("signature_name") if isinstance(parsed, dict) else None
    signature = runner.signatures.get(name or export.BYTES_SIGNATURE) if (
        name is None or isinstance(name, str)) else None
    if signature is None:
      raise errors.RequestError(f"model {runner.name!r} has no signature {name!r}; it has: "
                              f"{', '.join(sorted(runner.signatures))}")
    inputs, row_format = await run_in_threadpool(rest.parse_predict, parsed, signature)
    await run_in_threadpool(self.check_inputs, inputs, signature)
    outputs = await runner.run(signature.name, inputs)
    return JSONResponse(await run_in_threadpool(rest.format_predict, outputs, row_format))

  async def translate(self, request):
    runner = self.runner(request)
    fmt = request.query_params.get("format", "png").lower().replace("jpeg", "jpg")
    if fmt not in MEDIA_TYPES:
      raise errors.RequestError(f"format={fmt} is not one of {', '.join(MEDIA_TYPES)}")
    if self.translate_signature not in runner.signatures:
      raise errors.RequestError(f"model {runner.name!r} has no {self.translate_signature} "
                              "signature; use :predict")
    data = await uploaded_image(
        request, await read_body(request, self.max_body_bytes, self.body_timeout))
    pixels = errors.image_pixels(data)
    if pixels is None:
      raise errors.RequestError("the upload is not an image Pillow can read (JPEG, PNG, WebP, "
                              "TIFF, BMP, GIF, ...)")
    errors.require_pixels_within(pixels, self.max_translate_pixels, "--max_translate_pixels")
    try:
      rgb, alpha = await run_in_threadpool(images_lib.read_image, io.BytesIO(data))
    except images_lib.ImageReadError as e:
      raise errors.RequestError(f"the image could not be decoded: {e}") from None
    if self.tile and rgb.shape[0] * rgb.shape[1] > self.tile ** 2:
      out = await run_in_threadpool(self.translate_tiled, runner, rgb)
    else:
      out = (await runner.run(self.translate_signature, {"images": rgb[None]}))["images"][0]
    encoded = await run_in_threadpool(encode_image, out, alpha, fmt)
    return Response(encoded, media_type=MEDIA_TYPES[fmt],
                    headers={"X-Model-Version": str(runner.version)})

  def translate_tiled(self, runner, rgb):
    """A large image in tiles with the whole image's statistics (tiling.py), one at a time."""
    with self._tiling:
      if runner.name not in self._tilers:
        self._tilers[runner.name] = tiling.for_export(runner.model, self.precision)
      return self._tilers[runner.name](rgb, self.tile)


async def _http_error(request, exc):
  if exc.status_code == 405:
    return _error(405, f"{request.method} is not allowed on {request.url.path}")
  if exc.status_code == 404 and exc.detail == "Not Found":  # No route matched.
    return _error(404, f"no endpoint {request.url.path}; the API is /v1/models/<model>"
                  "[:predict|:translate|/metadata]")
  return _error(exc.status_code, str(exc.detail))


async def _request_error(request, exc):
  return _error(400, str(exc))


async def _too_large(request, exc):
  return _error(413, str(exc))


async def _body_timeout(request, exc):
  return _error(408, str(exc))


async def _client_gone(request, exc):
  logging.info("%s %s: the client disconnected mid-body", request.method, request.url.path)
  return Response(status_code=499)  # Nobody reads it.


async def _internal_error(request, exc):
  logging.exception("%s %s failed", request.method, request.url.path)
  return _error(500, "internal error; the server log has the details")


def make_app(server):
  """The Starlette app serving `server`'s models."""
  model = "/v1/models/{model:model}"
  version = model + "/versions/{version:int}"
  routes = [Route("/", server.page_route, methods=["GET"])]
  for prefix in (model, version):
    routes += [
        Route(prefix, server.status, methods=["GET"]),
        Route(prefix + "/metadata", server.metadata, methods=["GET"]),
        Route(prefix + ":predict", server.predict, methods=["POST"]),
        Route(prefix + ":translate", server.translate, methods=["POST"]),
    ]
  return Starlette(routes=routes, lifespan=server.lifespan, exception_handlers={
      HTTPException: _http_error, errors.RequestError: _request_error,
      errors.TooLarge: _too_large, BodyTimeout: _body_timeout, ClientGone: _client_gone,
      Exception: _internal_error})


def load_runners(model_dir, models, max_batch, cpu_kernels="auto"):
  """{name: ModelRunner} for each direction under model_dir and each NAME=PATH."""
  paths = {}
  if model_dir:
    for direction in export.DIRECTIONS:
      if export.find_versions(os.path.join(model_dir, direction)):
        paths[direction] = os.path.join(model_dir, direction)
    if not paths:
      raise ValueError(f"--model_dir {model_dir} has no exported direction (a2b/<version>/ or "
                       "b2a/<version>/): export first, or pass --model NAME=PATH")
  for item in models:
    name, sep, path = item.partition("=")
    if not sep and item in pretrained.PUBLISHED:  # a published model, under its own name
      name = path = item
    elif not sep or not name or not path or ":" in name or "/" in name:
      raise ValueError(f"--model {item}: expected NAME=PATH (NAME without '/' or ':'), or a "
                       "published model's name")
    paths[name] = path
  if not paths:
    raise ValueError("nothing to serve: pass --model_dir saved_models/<name> or --model NAME=PATH")
  # ModelRunner resolves each path before loading: a bad one is a clear FileNotFoundError.
  return {name: runner_lib.ModelRunner(name, path, max_batch, cpu_kernels)
          for name, path in paths.items()}


def listen(host, port):
  """A bound, listening socket (port 0: any free port)."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise OSError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
  sock.listen(2048)
  sock.set_inheritable(True)
  return sock
