"""Latency and throughput of `cyclegan.serve` against the bare SavedModel call.

  python tools/serve_benchmark.py --size 256 --requests 40 --clients 8

Exports a full-size generator (random weights: speed does not depend on them) unless --model is
given, times the bare `serving_default` call in this process, then starts the server in its own
process (as users run it) and times :predict (base64 PNG in JSON, the TF Serving REST form) and
:translate (raw upload) one request at a time, then --clients concurrent clients. Prints one
JSON line per measurement; latencies in seconds.
"""

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan import export  # noqa: E402
from cyclegan import models  # noqa: E402

flags.DEFINE_string("model", None, "An export to serve (default: a fresh full-size one).")
flags.DEFINE_integer("size", 256, "Square image side.")
flags.DEFINE_integer("requests", 40, "Timed requests one at a time (after 3 warm-up requests).")
flags.DEFINE_integer("clients", 8, "Concurrent clients for the throughput measurement.")
flags.DEFINE_integer("per_client", 10, "Requests per concurrent client.")
flags.DEFINE_integer("max_batch", 8, "The server's --max_batch.")
FLAGS = flags.FLAGS


def _stats(what, times, **extra):
  times = sorted(times)
  print(json.dumps({
      "what": what, "size": FLAGS.size, "n": len(times),
      "p50_s": round(statistics.median(times), 4),
      "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 4),
      "mean_s": round(statistics.fmean(times), 4), **extra}), flush=True)
  return statistics.median(times)


def _timed(fn, n, warmup=3):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _start_server(model_path):
  process = subprocess.Popen(
      [sys.executable, "-m", "cyclegan.serve", "--model", f"bench={model_path}", "--port", "0",
       "--max_batch", str(FLAGS.max_batch)],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  for line in process.stdout:
    if line.startswith("upload page:"):
      return process, re.search(r"http://[\d.]+:\d+", line).group(0)
  raise RuntimeError("the server did not start")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    model_path = FLAGS.model or export.save(models.resnet_generator(), os.path.join(tmp, "m"))
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (FLAGS.size, FLAGS.size, 3),
                                                     np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()

    model = tf.saved_model.load(export.resolve_version(model_path)[0])
    serving_default = model.signatures["serving_default"]
    bare = _stats("bare_savedmodel_serving_default", _timed(
        lambda: serving_default(image_bytes=tf.constant([png]))["translated_bytes"].numpy(),
        FLAGS.requests))
    del model, serving_default

    process, url = _start_server(model_path)
    try:
      body = {"instances": [{"b64": base64.b64encode(png).decode()}]}
      with httpx.Client(base_url=url, timeout=600) as client:
        def predict():
          response = client.post("/v1/models/bench:predict", json=body)
          response.raise_for_status()
          base64.b64decode(response.json()["predictions"][0]["translated_bytes"]["b64"])

        def translate():
          client.post("/v1/models/bench:translate", content=png).raise_for_status()

        p50 = _stats("http_predict_b64", _timed(predict, FLAGS.requests))
        print(json.dumps({"what": "server_overhead_at_p50", "predict_vs_bare": round(
            p50 / bare - 1, 4)}), flush=True)
        _stats("http_translate_raw", _timed(translate, FLAGS.requests))

      requests = {"predict": dict(url="/v1/models/bench:predict", json=body),
                  "translate": dict(url="/v1/models/bench:translate", content=png)}
      for endpoint, request in requests.items():
        def one_client(_):
          with httpx.Client(base_url=url, timeout=600) as client:
            times = []
            for _ in range(FLAGS.per_client):
              start = time.perf_counter()
              client.post(**request).raise_for_status()
              times.append(time.perf_counter() - start)
            return times

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(FLAGS.clients) as pool:
          times = sum(pool.map(one_client, range(FLAGS.clients)), [])
        wall = time.perf_counter() - start
        _stats(f"http_{endpoint}_{FLAGS.clients}_clients", times, max_batch=FLAGS.max_batch,
               images_per_s=round(len(times) / wall, 3),
               bare_sequential_images_per_s=round(1 / bare, 3))
    finally:
      process.send_signal(signal.SIGTERM)
      process.wait(timeout=120)


if __name__ == "__main__":
  app.run(main)
