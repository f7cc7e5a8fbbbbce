"""The HTTP server, started as users start it, driven by real clients: httpx, gRPC, Chromium."""

import base64
import concurrent.futures
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan import export
from cyclegan import models
from cyclegan import tiling
from conftest import REPO, headless_chromium, oriented_jpeg

MAX_PIXELS = 100_000
TILE = 300  # :translate tiles images of more than 90000 pixels
MAX_TRANSLATE_PIXELS = 200_000


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Served:
  """A `python -m cyclegan.serve` process and its address."""

  def __init__(self, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    self.process = subprocess.Popen(
        [sys.executable, "-m", "cyclegan.serve", "--port", "0", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines = []
    for line in self.process.stdout:
      self.lines.append(line)
      if line.startswith("upload page:"):
        break
    else:
      raise RuntimeError("server did not start:\n" + "".join(self.lines))
    self.url = re.search(r"http://[\d.]+:\d+", self.lines[-1]).group(0)
    # Keep draining the output so that the server never blocks on a full pipe.
    self._drain = threading.Thread(target=lambda: self.lines.extend(self.process.stdout),
                                   daemon=True)
    self._drain.start()

  def stop(self, sig=signal.SIGTERM):
    self.process.send_signal(sig)
    return self.wait()

  def wait(self):
    """The exit status once the server has stopped by itself, its output read to the end."""
    code = self.process.wait(timeout=60)
    self._drain.join(timeout=10)
    return code


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp("serve") / "export"
  for direction in export.DIRECTIONS:
    export.save(models.resnet_generator(ngf=4, n_blocks=1), str(root / direction))
  return root


@pytest.fixture(scope="module")
def saved(export_dir):
  return {d: tf.saved_model.load(str(export_dir / d / "1")) for d in export.DIRECTIONS}


@pytest.fixture(scope="module")
def grpc_port():
  return _free_port()


@pytest.fixture(scope="module")
def server(export_dir, grpc_port, tiny_cut_export):
  args = ["--model_dir", str(export_dir), "--model", f"cut={os.path.dirname(tiny_cut_export)}",
          "--max_body_mb", "1", "--max_pixels", str(MAX_PIXELS),
          "--tile", str(TILE), "--max_translate_pixels", str(MAX_TRANSLATE_PIXELS),
          "--body_timeout", "2", "--idle_timeout", "2", "--precision", "fp32"]
  try:
    import tensorflow_serving.apis  # noqa: F401
    args += ["--grpc_port", str(grpc_port)]
  except ImportError:
    pass
  served = Served(*args)
  yield served
  assert served.stop() == 0


@pytest.fixture
def client(server):
  with httpx.Client(base_url=server.url, timeout=60) as client:
    yield client


def _image(seed, height, width, mode="RGB"):
  channels = {"RGB": 3, "RGBA": 4}[mode]
  return np.random.RandomState(seed).randint(0, 256, (height, width, channels), np.uint8)


def _encode(array, fmt="PNG"):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, fmt)
  return buffer.getvalue()


def _b64(data):
  return {"b64": base64.b64encode(data).decode()}


def _expected_png(saved, direction, encoded):
  out = saved[direction].signatures["serving_default"](image_bytes=tf.constant([encoded]))
  return out["translated_bytes"].numpy()[0]


def _decode(data):
  return np.asarray(Image.open(io.BytesIO(data)))


def test_starts_on_loopback_with_both_directions(server):
  assert server.url.startswith("http://127.0.0.1:")
  assert any(line.startswith("serving a2b (version 1") for line in server.lines)
  assert any(line.startswith("serving b2a (version 1") for line in server.lines)
  assert any(line.startswith("serving cut (version 1") for line in server.lines)


def test_a_cut_export_predicts_and_translates_in_tiles(client, tiny_cut_export):
  """CUT's blur layers through :predict, and through :translate's tiled statistics passes."""
  loaded = tf.saved_model.load(tiny_cut_export)
  small = _encode(_image(11, 21, 30))
  response = client.post("/v1/models/cut:predict", json={"instances": [_b64(small)]})
  assert response.status_code == 200, response.text
  png = base64.b64decode(response.json()["predictions"][0]["translated_bytes"]["b64"])
  assert png == loaded.signatures["serving_default"](image_bytes=tf.constant([small]))[
      "translated_bytes"].numpy()[0]
  rgb = _image(12, 401, 301)  # over TILE^2 pixels: tiled
  response = client.post("/v1/models/cut:translate", content=_encode(rgb))
  assert response.status_code == 200, response.text
  want = tiling.SharedStatistics(export.generator_of(loaded))(rgb, TILE).astype(int)
  got = _decode(response.content).astype(int)
  assert got.shape == rgb.shape and np.abs(got - want).max() <= 1


def test_predict_row_and_columnar_equal_the_savedmodel(client, saved):
  images = [_encode(_image(1, 20, 30)), _encode(_image(2, 33, 17), "JPEG")]
  response = client.post("/v1/models/a2b:predict", json={"instances": [_b64(b) for b in images]})
  assert response.status_code == 200, response.text
  predictions = response.json()["predictions"]
  for encoded, prediction in zip(images, predictions):
    png = base64.b64decode(prediction["translated_bytes"]["b64"])
    assert png == _expected_png(saved, "a2b", encoded)
    assert prediction["translated_size"] == list(_decode(encoded).shape[:2])
  response = client.post("/v1/models/b2a/versions/1:predict",
                         json={"inputs": {"image_bytes": [_b64(images[0])]}})
  outputs = response.json()["outputs"]
  assert base64.b64decode(outputs["translated_bytes"][0]["b64"]) == _expected_png(
      saved, "b2a", images[0])
  pixels = _image(3, 9, 11)
  response = client.post("/v1/models/a2b:predict", json={
      "signature_name": "translate_uint8", "instances": [pixels.tolist()]})
  expected = saved["a2b"].signatures["translate_uint8"](images=tf.constant(pixels[None]))
  np.testing.assert_array_equal(response.json()["predictions"], expected["images"].numpy())


def test_translate_raw_and_multipart_uploads(client, saved):
  rgb = _image(4, 24, 40)
  expected = saved["a2b"].signatures["translate_uint8"](images=tf.constant(rgb[None]))
  expected = expected["images"].numpy()[0]
  raw = client.post("/v1/models/a2b:translate", content=_encode(rgb),
                    headers={"Content-Type": "image/png"})
  assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
  assert raw.headers["x-model-version"] == "1"
  np.testing.assert_array_equal(_decode(raw.content), expected)
  form = client.post("/v1/models/a2b:translate", files={"image": ("x.png", _encode(rgb))})
  np.testing.assert_array_equal(_decode(form.content), expected)
  jpeg = client.post("/v1/models/a2b:translate?format=jpeg", content=_encode(rgb))
  assert jpeg.headers["content-type"] == "image/jpeg" and _decode(jpeg.content).shape == rgb.shape
  rgba = _image(5, 24, 40, "RGBA")
  out = _decode(client.post("/v1/models/a2b:translate", content=_encode(rgba)).content)
  assert out.shape == (24, 40, 4)
  np.testing.assert_array_equal(out[..., 3], rgba[..., 3])  # Alpha passes through unchanged.


@pytest.mark.parametrize("orientation", [3, 6])
def test_phone_photos_are_upright_on_translate_and_predict(client, saved, tmp_path, orientation):
  upright = oriented_jpeg(tmp_path / "photo.jpg", orientation)
  data = (tmp_path / "photo.jpg").read_bytes()
  want = saved["a2b"].signatures["translate_uint8"](images=tf.constant(upright[None]))
  want = want["images"].numpy()[0]
  # :translate decodes with Pillow, so its input is exactly `upright`.
  np.testing.assert_array_equal(
      _decode(client.post("/v1/models/a2b:translate", content=data).content), want)
  # :predict runs serving_default, which turns the image in the graph after TF's JPEG decoder
  # (~1 level from Pillow's); turned wrong, it would be ~60 levels off.
  prediction = client.post("/v1/models/a2b:predict",
                           json={"instances": [_b64(data)]}).json()["predictions"][0]
  assert prediction["translated_size"] == [180, 256]
  png = _decode(base64.b64decode(prediction["translated_bytes"]["b64"]))
  assert np.abs(png.astype(int) - want).mean() < 3


def test_status_and_metadata_as_tf_serving_writes_them(client, export_dir):
  assert client.get("/v1/models/a2b").json() == {"model_version_status": [{
      "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
  metadata = client.get("/v1/models/a2b/metadata").json()
  assert metadata["model_spec"] == {"name": "a2b", "signature_name": "", "version": "1"}
  signatures = metadata["metadata"]["signature_def"]["signature_def"]
  assert set(signatures) == {"serving_default", "translate_uint8", "translate_float",
                             "translate_uint8_bf16", "__saved_model_init_op"}
  default = signatures["serving_default"]
  assert default["method_name"] == "tensorflow/serving/predict"
  assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
  assert default["outputs"]["translated_size"]["tensor_shape"]["dim"][1]["size"] == "2"
  # The same signatures that saved_model_cli (not our code) reads from the export.
  shown = subprocess.run(["saved_model_cli", "show", "--dir", str(export_dir / "a2b" / "1"),
                          "--tag_set", "serve"], capture_output=True, text=True, check=True)
  assert set(re.findall(r'SignatureDef key: "(\w+)"', shown.stdout)) == set(signatures)


@pytest.mark.parametrize("method,path,kwargs,status,message", [
    ("POST", "/v1/models/a2b:predict", {"content": b"{"}, 400, "not valid JSON"),
    ("POST", "/v1/models/a2b:predict", {"json": {"instances": [{"b64": "%%"}]}}, 400,
     "not valid base64"),
    ("POST", "/v1/models/a2b:predict", {"json": {"instances": [_b64(b"text, not an image")]}},
     400, "Unknown image file format"),
    ("POST", "/v1/models/a2b:predict", {"json": {"signature_name": "nope", "instances": [1]}},
     400, "has no signature 'nope'"),
    ("POST", "/v1/models/a2b:predict", {"json": {"signature_name": ["x"], "instances": [1]}},
     400, "has no signature ['x']"),
    ("POST", "/v1/models/a2b:predict", {"json": {"signature_name": "translate_uint8",
                                                 "instances": [[1, 2, 3]]}}, 400, "shape"),
    ("POST", "/v1/models/a2b:translate", {"content": b"GIF89a but not really"}, 400,
     "not an image"),
    ("POST", "/v1/models/a2b:translate", {"files": {"note": ("n.txt", b"hi", "text/plain")},
                                          "data": {"x": "1"}}, 400, "not an image"),
    ("POST", "/v1/models/a2b:translate?format=gif", {"content": b""}, 400, "format=gif"),
    ("POST", "/v1/models/zebra:predict", {"json": {"instances": [1]}}, 404, "'zebra' is not served"),
    ("GET", "/v1/models/a2b/versions/7", {}, 404, "no version 7"),
    ("GET", "/v2/anything", {}, 404, "no endpoint"),
    ("GET", "/v1/models/a2b:predict", {}, 405, "GET is not allowed"),
    ("DELETE", "/v1/models/a2b", {}, 405, "DELETE is not allowed"),
    ("POST", "/v1/models/a2b:predict", {"content": b" " * (2**20 + 1)}, 413, "--max_body_mb"),
    ("POST", "/v1/models/a2b:translate", {"content": b"x" * (3 * 2**20)}, 413, "--max_body_mb"),
])
def test_errors_are_json_that_says_what_is_wrong(client, method, path, kwargs, status, message):
  response = client.request(method, path, **kwargs)
  assert response.status_code == status, response.text
  assert response.headers["content-type"] == "application/json"
  assert message in response.json()["error"]
  assert "Traceback" not in response.text and "File \"" not in response.text


def _connect(server):
  host, port = server.url[len("http://"):].rsplit(":", 1)
  return socket.create_connection((host, int(port)), timeout=15)


def _head(length):
  return (f"POST /v1/models/a2b:translate HTTP/1.1\r\nHost: test\r\n"
          f"Content-Length: {length}\r\n\r\n").encode()


def _reply(connection):
  """(everything the server sends until it closes, seconds to its first byte)."""
  started = time.monotonic()
  received = connection.recv(65536)
  first = time.monotonic() - started
  while chunk := connection.recv(65536):
    received += chunk
  return received, first


def test_a_declared_oversize_body_gets_413_without_being_read(server):
  with _connect(server) as connection:
    connection.sendall(_head(300 * 2**20) + b"x" * 100)  # Declares 300 MiB, then stops.
    reply, seconds = _reply(connection)
  assert reply.startswith(b"HTTP/1.1 413") and b"--max_body_mb" in reply, reply[:300]
  assert seconds < 1.5


def test_stalled_idle_and_vanishing_clients(server):
  with _connect(server) as connection:  # Stops mid-body: 408 after --body_timeout (2 s).
    connection.sendall(_head(1000) + b"x" * 10)
    reply, seconds = _reply(connection)
  assert reply.startswith(b"HTTP/1.1 408") and b"--body_timeout" in reply, reply[:300]
  assert 1.5 < seconds < 6
  with _connect(server) as connection:  # Idle after a request: closed after --idle_timeout.
    connection.sendall(b"GET /v1/models/a2b HTTP/1.1\r\nHost: test\r\n\r\n")
    started = time.monotonic()
    reply, _ = _reply(connection)
  assert reply.startswith(b"HTTP/1.1 200") and 1.5 < time.monotonic() - started < 6
  with _connect(server) as connection:  # Connects and never sends a byte.
    started = time.monotonic()
    reply, _ = _reply(connection)
  assert reply == b"" and time.monotonic() - started < 6
  for _ in range(3):  # Hangs up mid-body: nothing to answer, and no traceback in the log.
    with _connect(server) as connection:
      connection.sendall(_head(1000) + b"x" * 10)
  time.sleep(1)
  assert "Traceback" not in "".join(server.lines)
  assert httpx.get(server.url + "/v1/models/a2b").status_code == 200


def test_pixel_limit(client):
  big = _encode(np.zeros((400, 300, 3), np.uint8))  # 120000 pixels > MAX_PIXELS
  for response in (client.post("/v1/models/a2b:predict", json={"instances": [_b64(big)]}),
                   client.post("/v1/models/a2b:predict", json={
                       "signature_name": "translate_uint8",
                       "instances": np.zeros((1, 400, 300, 3), np.uint8).tolist()})):
    assert response.status_code == 413
    assert "--max_pixels" in response.json()["error"]
  huge = client.post("/v1/models/a2b:translate", content=_encode(np.zeros((500, 500, 3),
                                                                          np.uint8)))
  assert huge.status_code == 413 and "--max_translate_pixels" in huge.json()["error"]


def test_translate_tiles_large_images_as_cyclegan_translate_does(client, saved):
  """Over --tile^2 pixels, :translate uses tiling.SharedStatistics: the same pixels as the
  library in this process (up to float rounding between processes)."""
  rgb = _image(6, 403, 297)  # 119691 pixels: over TILE^2, over --max_pixels
  response = client.post("/v1/models/a2b:translate", content=_encode(rgb))
  assert response.status_code == 200, response.text
  shared = tiling.SharedStatistics(export.generator_of(saved["a2b"]))
  want = shared(rgb, TILE).astype(int)
  got = _decode(response.content).astype(int)
  assert got.shape == rgb.shape and np.abs(got - want).max() <= 1


def test_concurrent_clients_all_get_their_own_answers(server, saved):
  images = {(c, r): _encode(_image(100 * c + r, 16 + 4 * (r % 3), 16)) for c in range(8)
            for r in range(25)}
  wanted = {key: _expected_png(saved, "a2b", data) for key, data in images.items()}

  def one_client(c):
    errors = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
      for r in range(25):
        response = client.post("/v1/models/a2b:predict",
                               json={"instances": [_b64(images[(c, r)])]})
        if response.status_code != 200:
          errors.append(response.text)
          continue
        png = base64.b64decode(response.json()["predictions"][0]["translated_bytes"]["b64"])
        if png != wanted[(c, r)]:
          errors.append(f"client {c} request {r}: someone else's answer")
    return errors

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    errors = sum(pool.map(one_client, range(8)), [])
  assert errors == []


def test_grpc_predict_request_from_tensorflow_serving_api(server, grpc_port, saved):
  pytest.importorskip("tensorflow_serving.apis", reason="pip install --no-deps "
                      "tensorflow-serving-api (the README's test command does)")
  import grpc
  from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

  encoded = _encode(_image(7, 21, 13))
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "b2a"
  request.model_spec.signature_name = "serving_default"
  request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([encoded]))
  with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=60)
    assert response.model_spec.version.value == 1
    assert tf.make_ndarray(response.outputs["translated_bytes"])[0] == _expected_png(
        saved, "b2a", encoded)
    assert tf.make_ndarray(response.outputs["translated_size"]).tolist() == [[21, 13]]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
      stub.Predict(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_page_in_headless_chromium(server, saved, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  rgb = _image(8, 48, 64)
  photo = tmp_path / "photo.png"
  photo.write_bytes(_encode(rgb))
  browser = headless_chromium(tmp_path)
  try:
    browser.get(server.url + "/")
    models_listed = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert models_listed == ["a2b", "b2a", "cut"]
    browser.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in
        ("done", "error"))
    status = browser.find_element(By.ID, "status").text
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
    assert status.startswith("Translated by a2b")
    shown = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch(document.getElementById('translated').src).then(r => r.arrayBuffer())"
        ".then(b => done(btoa(String.fromCharCode(...new Uint8Array(b)))));")
    expected = saved["a2b"].signatures["translate_uint8"](images=tf.constant(rgb[None]))
    np.testing.assert_array_equal(_decode(base64.b64decode(shown)), expected["images"].numpy()[0])
    assert browser.execute_script(
        "return document.getElementById('original').naturalWidth") == 64
    browser.save_screenshot(str(tmp_path / "page.png"))
  finally:
    browser.quit()


def test_graceful_shutdown_finishes_the_request_in_flight(export_dir):
  served = Served("--model", f"zebra={export_dir / 'a2b'}")
  body = _encode(_image(9, 300, 200))
  first_half_sent, resume = threading.Event(), threading.Event()

  def upload():  # Half the body, then (after the server got SIGTERM) the rest.
    yield body[:len(body) // 2]
    first_half_sent.set()
    resume.wait(30)
    yield body[len(body) // 2:]

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    with httpx.Client(base_url=served.url, timeout=120) as client:
      pending = pool.submit(client.post, "/v1/models/zebra:translate", content=upload())
      assert first_half_sent.wait(30)
      time.sleep(0.5)
      served.process.send_signal(signal.SIGTERM)
      time.sleep(0.5)
      assert served.process.poll() is None  # Still serving the request in flight.
      resume.set()
      response = pending.result()
  assert response.status_code == 200 and _decode(response.content).shape == (300, 200, 3)
  # The one SIGTERM stops it (a second one could land while Python finalizes, where the
  # default handler is back, and kill it with -15).
  assert served.wait() == 0 and served.lines[-1].strip() == "stopped"


@pytest.mark.parametrize("args,message", [
    (["--model_dir", "/nonexistent"], "has no exported direction"),
    (["--model", "a2b"], "expected NAME=PATH"),
    (["--model", "x=/nonexistent"], "is not an exported model"),
    ([], "nothing to serve"),
])
def test_bad_arguments_exit_with_one_line(args, message):
  result = subprocess.run([sys.executable, "-m", "cyclegan.serve", "--port", "0", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 2  # Usage or data error: nothing was served.
  assert message in result.stderr and "Traceback" not in result.stderr


def test_without_the_serve_extra_the_command_says_what_to_install():
  """As if uvicorn were not installed: a training install does not have it."""
  script = ("import runpy, sys; sys.modules['uvicorn'] = None; "
            "runpy.run_module('cyclegan.serve', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", script, "--port", "0"], capture_output=True,
                          text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: cyclegan.serve needs uvicorn, from the [serve] extra: pip install "
      "'cyclegan[serve]' (or pip install -e '.[serve]' in a checkout)")


def test_port_in_use_is_one_line(export_dir):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "cyclegan.serve", "--model_dir",
                             str(export_dir), "--port", str(port)], capture_output=True,
                            text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 2
  assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_precision_auto_and_cpu_kernels_off_start_and_translate(export_dir):
  """The defaults' counterpart: --precision auto says what it picked and why, once."""
  served = Served("--model", f"x={export_dir / 'a2b'}", "--cpu_kernels", "off")
  try:
    assert len([line for line in served.lines if "precision auto: " in line]) == 1
    with httpx.Client(base_url=served.url, timeout=60) as client:
      response = client.post("/v1/models/x:translate", content=_encode(_image(7, 20, 28)))
    assert response.status_code == 200 and _decode(response.content).shape == (20, 28, 3)
  finally:
    assert served.stop() == 0
