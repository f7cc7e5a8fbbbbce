"""Serve exports over HTTP with TF Serving's REST API, plus an upload page.

  python -m cyclegan.serve --model_dir saved_models/monet2photo      # models a2b and b2a
  python -m cyclegan.serve --model photo2monet=saved_models/monet2photo/b2a --port 8501

Endpoints (the first three as in TF Serving, so one client works against both):
  POST /v1/models/<m>[/versions/<v>]:predict    {"instances": [...]} -> {"predictions": [...]}
  GET  /v1/models/<m>[/versions/<v>]            version status
  GET  /v1/models/<m>[/versions/<v>]/metadata   signatures
  POST /v1/models/<m>[/versions/<v>]:translate  an image file (raw body or multipart) -> the image
  GET  /                                        a page to upload a photo and see its translation
Errors are JSON {"error": "..."} with 400 (bad input), 404, 405, 413 (too large) or 500.
"""

import contextlib
import importlib.resources
import io
import json
import logging as std_logging
import os
import signal
import socket
import sys
import warnings

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import uvicorn  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.convertors import Convertor, register_url_convertor  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from cyclegan import export  # noqa: E402
from cyclegan import images as images_lib  # noqa: E402
from cyclegan import rest  # noqa: E402
from cyclegan import runner as runner_lib  # noqa: E402

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
TRANSLATE_SIGNATURES = {"fp32": "translate_uint8", "bf16": "translate_uint8_bf16"}


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


def image_pixels(data):
  """Width x height from the header of encoded image bytes; None if Pillow cannot tell."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        return image.width * image.height
  except Image.DecompressionBombError:
    return float("inf")
  except Exception:  # Not an image Pillow knows: the model (or read_image) will say so.
    return None


def require_pixels_within(pixels, max_pixels):
  """Raises TooLarge for an image of more than max_pixels pixels."""
  if pixels > max_pixels:
    raise rest.TooLarge(f"an image has {pixels} pixels, more than the server's limit of "
                        f"{max_pixels} (--max_pixels); downscale it, or use cyclegan.translate, "
                        "which tiles large images")


def check_pixels(inputs, signature, max_pixels):
  """Raises TooLarge if any image in the inputs has more than max_pixels pixels."""
  for name, array in inputs.items():
    if signature.inputs[name].dtype == tf.string:
      sizes = [image_pixels(v) for v in array.reshape(-1)]
      require_pixels_within(max((s for s in sizes if s is not None), default=0), max_pixels)
    elif array.ndim == 4:
      require_pixels_within(array.shape[1] * array.shape[2], max_pixels)


async def read_body(request, limit):
  """The request body, or TooLarge past `limit` bytes (the rest is read and dropped so that
  the client, still sending, gets the 413 instead of a broken connection)."""
  length = request.headers.get("content-length", "")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size <= limit:
      chunks.append(chunk)
    elif size > 8 * limit:  # Stop reading; the connection closes.
      break
  if size > limit or (length.isdigit() and int(length) > limit):
    raise rest.TooLarge(f"the request body is larger than the server's limit of {limit} bytes "
                        "(--max_body_mb)")
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
  raise rest.RequestError("the multipart form has no file: send the image as a file field "
                          "(curl -F image=@photo.jpg) or as the raw body")


def encode_image(rgb, alpha, fmt):
  buffer = io.BytesIO()
  images_lib.save_image(buffer, rgb, alpha, fmt)
  return buffer.getvalue()


class Server:
  """The models and limits behind the routes."""

  def __init__(self, runners, max_body_bytes, max_pixels, precision="fp32", grpc_address=None):
    self.runners = runners
    self.grpc_address = grpc_address
    self.max_body_bytes = max_body_bytes
    self.max_pixels = max_pixels
    self.translate_signature = TRANSLATE_SIGNATURES[precision]
    self.page = importlib.resources.files("cyclegan").joinpath("page.html").read_text().replace(
        "__MODELS__", json.dumps(sorted(runners)).replace("<", "\\u003c"))

  def check_inputs(self, inputs, signature):
    check_pixels(inputs, signature, self.max_pixels)

  @contextlib.asynccontextmanager
  async def lifespan(self, app):
    """Starts the gRPC API beside HTTP, on the same event loop, when asked for."""
    if not self.grpc_address:
      yield
      return
    from cyclegan import grpc_service  # Needs tensorflow-serving-api, an optional package.
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
    body = await read_body(request, self.max_body_bytes)
    try:
      parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise rest.RequestError(f"the body is not valid JSON: {e}") from None
    name = parsed.get("signature_name") if isinstance(parsed, dict) else None
    signature = runner.signatures.get(name or "serving_default") if (
        name is None or isinstance(name, str)) else None
    if signature is None:
      raise rest.RequestError(f"model {runner.name!r} has no signature {name!r}; it has: "
                              f"{', '.join(sorted(runner.signatures))}")
    inputs, row_format = await run_in_threadpool(rest.parse_predict, parsed, signature)
    await run_in_threadpool(self.check_inputs, inputs, signature)
    outputs = await runner.run(signature.name, inputs)
    return JSONResponse(await run_in_threadpool(rest.format_predict, outputs, row_format))

  async def translate(self, request):
    runner = self.runner(request)
    fmt = request.query_params.get("format", "png").lower().replace("jpeg", "jpg")
    if fmt not in MEDIA_TYPES:
      raise rest.RequestError(f"format={fmt} is not one of {', '.join(MEDIA_TYPES)}")
    if self.translate_signature not in runner.signatures:
      raise rest.RequestError(f"model {runner.name!r} has no {self.translate_signature} "
                              "signature; use :predict")
    data = await uploaded_image(request, await read_body(request, self.max_body_bytes))
    pixels = image_pixels(data)
    if pixels is None:
      raise rest.RequestError("the upload is not an image Pillow can read (JPEG, PNG, WebP, "
                              "TIFF, BMP, GIF, ...)")
    require_pixels_within(pixels, self.max_pixels)
    try:
      rgb, alpha = await run_in_threadpool(images_lib.read_image, io.BytesIO(data))
    except images_lib.ImageReadError as e:
      raise rest.RequestError(f"the image could not be decoded: {e}") from None
    outputs = await runner.run(self.translate_signature, {"images": rgb[None]})
    encoded = await run_in_threadpool(encode_image, outputs["images"][0], alpha, fmt)
    return Response(encoded, media_type=MEDIA_TYPES[fmt],
                    headers={"X-Model-Version": str(runner.version)})


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
      HTTPException: _http_error, rest.RequestError: _request_error,
      runner_lib.ModelInputError: _request_error, rest.TooLarge: _too_large,
      Exception: _internal_error})


def load_runners(model_dir, models, max_batch):
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
    if not sep or not name or not path or ":" in name or "/" in name:
      raise ValueError(f"--model {item}: expected NAME=PATH, NAME without '/' or ':'")
    paths[name] = path
  if not paths:
    raise ValueError("nothing to serve: pass --model_dir saved_models/<name> or --model NAME=PATH")
  # ModelRunner resolves each path before loading: a bad one is a clear FileNotFoundError.
  return {name: runner_lib.ModelRunner(name, path, max_batch) for name, path in paths.items()}


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


def define_flags():
  flags.DEFINE_string("model_dir", None, "An export folder (saved_models/<name>): serves its a2b "
                      "and b2a directions under those names.")
  flags.DEFINE_multi_string("model", [], "NAME=PATH: serve the export at PATH (a base path, "
                            "whose highest version is served, or a version folder) as NAME. "
                            "Repeatable.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the server to the "
                      "network (it has no authentication).")
  flags.DEFINE_integer("port", 8501, "HTTP port (TF Serving's REST port is 8501); 0: any free "
                       "port, printed at start.")
  flags.DEFINE_integer("grpc_port", None, "Also serve TF Serving's gRPC API (Predict, "
                       "GetModelMetadata, GetModelStatus) on this port (TF Serving's is 8500). "
                       "Needs: pip install --no-deps tensorflow-serving-api")
  flags.DEFINE_integer("max_body_mb", 32, "Largest request body, in MiB; larger ones get 413.")
  flags.DEFINE_integer("max_pixels", 2048 * 2048, "Largest image, in pixels, per image; larger "
                       "ones get 413 (memory grows with pixels: ~2 GB per megapixel in fp32).")
  flags.DEFINE_integer("max_batch", 8, "Most images per model call when requests queue up.")
  flags.DEFINE_enum("precision", "fp32", list(TRANSLATE_SIGNATURES),
                    "Compute precision of :translate (bf16 is ~1.6x faster on CPUs with "
                    "AVX512_BF16; :predict uses the signature the request names).")
  flags.DEFINE_integer("shutdown_timeout", 30, "Seconds that in-flight requests get to finish "
                       "after SIGINT/SIGTERM.")


def main(argv):
  del argv
  f = flags.FLAGS
  std_logging.getLogger("uvicorn.error").setLevel(std_logging.WARNING)
  try:
    if f.grpc_port is not None:
      try:
        import tensorflow_serving.apis  # noqa: F401
      except ImportError:
        raise ValueError("--grpc_port needs the tensorflow-serving-api package: pip install "
                         "--no-deps tensorflow-serving-api") from None
    sock = listen(f.host, f.port)
    runners = load_runners(f.model_dir, f.model, f.max_batch)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  host, port = sock.getsockname()[:2]
  host = f"[{host}]" if ":" in host else host
  grpc_address = f"{host}:{f.grpc_port}" if f.grpc_port is not None else None
  server = Server(runners, f.max_body_mb * 2**20, f.max_pixels, f.precision, grpc_address)
  url = f"http://{host}:{port}"
  for name, runner in sorted(runners.items()):
    print(f"serving {name} (version {runner.version}, {runner.path}) at "
          f"{url}/v1/models/{name}:predict", flush=True)
  if grpc_address:
    print(f"gRPC (TF Serving's PredictionService) at {grpc_address}", flush=True)
  print(f"upload page: {url}/  (Ctrl-C to stop)", flush=True)
  config = uvicorn.Config(make_app(server), log_level="warning", access_log=False,
                          timeout_graceful_shutdown=f.shutdown_timeout)
  # uvicorn finishes in-flight requests on SIGINT/SIGTERM, then re-raises the signal to the
  # handler it found: make that one a no-op so that a graceful stop exits with status 0.
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: None)
  uvicorn.Server(config).run(sockets=[sock])
  for runner in runners.values():
    runner.close()
  print("stopped", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
