"""Serve exports over HTTP with TF Serving's REST API (and its gRPC API), plus an upload page.

  pip install -e ".[serve]"
  python -m cyclegan.serve --model_dir saved_models/monet2photo      # models a2b and b2a
  python -m cyclegan.serve --model photo2monet=saved_models/monet2photo/b2a --port 8501

The app is cyclegan.serving; this is the command: flags, the socket, the server's lifetime.
"""

import logging as std_logging
import signal
import sys

from absl import flags

try:
  import uvicorn  # noqa: E402
  from cyclegan.serving import http  # noqa: E402
except ImportError as e:  # The [serve] extra: starlette, uvicorn, python-multipart.
  sys.stderr.write(f"error: cyclegan.serve needs {e.name}, from the [serve] extra: pip install "
                   "'cyclegan[serve]' (or pip install -e '.[serve]' in a checkout)\n")
  sys.exit(2)

from cyclegan import cli  # noqa: E402
from cyclegan import kernels  # noqa: E402
from cyclegan import runtime  # noqa: E402


def define_flags():
  flags.DEFINE_string("model_dir", None, "An export folder (saved_models/<name>): serves its a2b "
                      "and b2a directions under those names.")
  flags.DEFINE_multi_string("model", [], "NAME=PATH: serve the export at PATH (a base path, "
                            "whose highest version is served, or a version folder) as NAME; "
                            "or a published model's name (python -m cyclegan.pretrained list). "
                            "Repeatable.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the server to the "
                      "network (it has no authentication).")
  flags.DEFINE_integer("port", 8501, "HTTP port (TF Serving's REST port is 8501); 0: any free "
                       "port, printed at start.")
  flags.DEFINE_integer("grpc_port", None, "Also serve TF Serving's gRPC API (Predict, "
                       "GetModelMetadata, GetModelStatus) on this port (TF Serving's is 8500). "
                       "Needs: pip install --no-deps tensorflow-serving-api")
  flags.DEFINE_integer("max_body_mb", 32, "Largest request body, in MiB; larger ones get 413.")
  flags.DEFINE_integer("max_pixels", 2048 * 2048, "Largest image of :predict (and gRPC), in "
                       "pixels; larger ones get 413 (the whole image goes through the model: "
                       "~2 GB per megapixel in fp32).")
  flags.DEFINE_integer("tile", 1024, ":translate translates images of more than tile^2 pixels "
                       "in tiles normalised with the whole image's statistics, as "
                       "cyclegan.translate does; 0: never tile.")
  flags.DEFINE_integer("max_translate_pixels", 6000 * 4000, "Largest image :translate takes, "
                       "in pixels (tiled, so memory grows with --tile, not with the image: "
                       "about 2 KB per pixel of a tile and its 32 px halo, full-size generator "
                       "in fp32, plus 12 bytes per image pixel).")
  flags.DEFINE_integer("max_batch", 8, "Most images per model call when requests queue up.")
  runtime.define_inference_flags(":translate (:predict runs the signature a request names)")
  flags.DEFINE_integer("shutdown_timeout", 30, "Seconds that in-flight requests get to finish "
                       "after SIGINT/SIGTERM.")
  flags.DEFINE_float("body_timeout", 30, "Seconds the server waits for the next part of a "
                     "request body before answering 408 (a client that stalls mid-upload).")
  flags.DEFINE_float("idle_timeout", 5, "Seconds a connection may stay open without sending "
                     "a request (new, or kept alive after one).")


def main(argv):
  cli.no_arguments(argv)
  f = flags.FLAGS
  std_logging.getLogger("uvicorn.error").setLevel(std_logging.WARNING)
  try:
    if f.grpc_port is not None:
      try:
        import tensorflow_serving.apis  # noqa: F401
      except ImportError:
        raise ValueError("--grpc_port needs the tensorflow-serving-api package: pip install "
                         "--no-deps tensorflow-serving-api") from None
    sock = http.listen(f.host, f.port)
    kernels.configure(f.cpu_kernels)
    runners = http.load_runners(f.model_dir, f.model, f.max_batch, f.cpu_kernels)
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from None
  precision = runtime.inference_precision(
      f.precision, set.intersection(*(set(r.signatures) for r in runners.values())))
  host, port = sock.getsockname()[:2]
  host = f"[{host}]" if ":" in host else host
  grpc_address = f"{host}:{f.grpc_port}" if f.grpc_port is not None else None
  server = http.Server(runners, f.max_body_mb * 2**20, f.max_pixels, precision, grpc_address,
                       f.body_timeout, f.tile, f.max_translate_pixels)
  url = f"http://{host}:{port}"
  for name, runner in sorted(runners.items()):
    print(f"serving {name} (version {runner.version}, {runner.path}) at "
          f"{url}/v1/models/{name}:predict", flush=True)
  if grpc_address:
    print(f"gRPC (TF Serving's PredictionService) at {grpc_address}", flush=True)
  print(f"upload page: {url}/  (Ctrl-C to stop)", flush=True)
  config = uvicorn.Config(http.make_app(server), log_level="warning", access_log=False,
                          timeout_graceful_shutdown=f.shutdown_timeout,
                          timeout_keep_alive=f.idle_timeout, http=http.IdleTimeoutProtocol)
  # uvicorn finishes in-flight requests on SIGINT/SIGTERM, then re-raises the signal to the
  # handler it found: make that one a no-op so that a graceful stop exits with status 0.
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: None)
  uvicorn.Server(config).run(sockets=[sock])
  for runner in runners.values():
    runner.close()
  print("stopped", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
