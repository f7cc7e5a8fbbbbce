"""Published models by name, from a local HTTP server holding generated checkpoints in the
reference's layouts: download, resume, cache, conversion, and the bad cases."""

import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from cyclegan import cli
from cyclegan import pretrained
from conftest import REPO, load_tool, photo

torch = pytest.importorskip("torch", reason="PyTorch (the [torch] extra) makes the checkpoints")
torch_reference = load_tool("torch_reference")


class Files(http.server.ThreadingHTTPServer):
  """Serves `files` {url path: bytes} with Range; records each request; `html` answers an HTML
  page instead, `cut_at` closes the first full answer after that many bytes."""

  def __init__(self):
    self.files, self.requests, self.html, self.cut_at = {}, [], False, None

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if server.html:
          body = b"<html><body>Moved</body></html>"
          self.send_response(200)
          self.send_header("Content-Type", "text/html")
          self.send_header("Content-Length", str(len(body)))
          self.end_headers()
          self.wfile.write(body)
          return
        if self.path not in server.files:
          self.send_error(404)
          return
        data, start = server.files[self.path], 0
        if self.headers.get("Range"):
          start = int(self.headers["Range"].split("=")[1].rstrip("-"))
          if start >= len(data):
            self.send_error(416)
            return
          self.send_response(206)
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
          self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if server.cut_at and not start:
          server.cut_at, cut = None, server.cut_at
          self.wfile.write(data[:cut])
          self.close_connection = True
          return
        self.wfile.write(data[start:])

      def log_message(self, *args):
        pass

    super().__init__(("127.0.0.1", 0), Handler)
    threading.Thread(target=self.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self.server_address[1]}"


def _pth(net, legacy=True):
  """A generator's state dict as the reference saves it (the published files are legacy)."""
  buffer = io.BytesIO()
  torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, buffer,
             _use_new_zipfile_serialization=not legacy)
  return buffer.getvalue()


def _net(seed, use_dropout=False, antialias=False):
  """The published generators' layout (ResNet-9), at a small width (ngf 8) to stay quick."""
  torch.manual_seed(seed)
  return torch_reference.resnet_generator(8, 9, use_dropout, antialias).eval()


def _torch_uint8(net, rgb):
  """PyTorch's translation of a photo whose sides are multiples of 4, in grey levels."""
  with torch.no_grad():
    x = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    y = net(x)[0].permute(1, 2, 0).numpy()
  return np.clip(np.round((y + 1) * 127.5), 0, 255)


@pytest.fixture
def server():
  files = Files()
  yield files
  files.shutdown()
  files.server_close()


@pytest.fixture
def cache(tmp_path, server, monkeypatch):
  env = {"CYCLEGAN_HOME": str(tmp_path / "home"), "CYCLEGAN_PRETRAINED_URL": server.url + "/cg",
         "CYCLEGAN_CUT_PRETRAINED_URL": server.url + "/cut/pretrained_models.tar"}
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  return env


def _command(module, *args, env=None):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**os.environ, **(env or {}),
                                                     "TF_CPP_MIN_LOG_LEVEL": "2"})


def _leaves_nothing_trusted(cache_env):
  home = cache_env["CYCLEGAN_HOME"]
  found = [os.path.join(r, f) for r, _, fs in os.walk(home) for f in fs]
  return all(f.endswith((".lock", ".part")) for f in found), found


def test_translate_by_name_downloads_once_and_matches_pytorch(tmp_path, server, cache):
  """The issue's acceptance run: horse2zebra (no-dropout layout, legacy format) by name."""
  net = _net(0)
  server.files["/cg/horse2zebra.pth"] = _pth(net)
  rgb = photo(96, 128)
  (tmp_path / "photos").mkdir()
  Image.fromarray(rgb).save(tmp_path / "photos" / "a.png")
  args = ["--model", "horse2zebra", "--input", str(tmp_path / "photos"), "--output",
          str(tmp_path / "out"), "--precision", "fp32"]  # PyTorch runs fp32
  done = _command("cyclegan.translate", *args, env=cache)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "downloading horse2zebra" in done.stderr
  got = np.asarray(Image.open(tmp_path / "out" / "a.png")).astype(int)
  want = _torch_uint8(net, rgb)
  assert np.abs(got - want).max() <= 1 and want.std() > 5
  assert len(server.requests) == 1
  again = _command("cyclegan.translate", *args, "--overwrite", env=cache)
  assert again.returncode == 0, again.stderr[-3000:]
  assert len(server.requests) == 1  # the cache answered


@pytest.mark.parametrize("name,kind", [("style_monet", "dropout layout, zip format"),
                                       ("horse2zebra_cut", "CUT"),
                                       ("cityscapes_fastcut", "FastCUT")])
def test_other_layouts_convert_and_match_pytorch(server, cache, name, kind):
  nets = {f"{data}_{k}": _net(i, antialias=True) for i, (data, k) in enumerate(
      (d, k) for d in ("horse2zebra", "cat2dog", "cityscapes") for k in ("cut", "fastcut"))}
  if kind.startswith("dropout"):
    net = _net(1, use_dropout=True)
    server.files["/cg/style_monet.pth"] = _pth(net, legacy=False)
  else:
    net = nets[name]
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as out:
      for each, each_net in nets.items():
        data = _pth(each_net, legacy=False)
        member = tarfile.TarInfo(f"pretrained_models/{each}_pretrained/latest_net_G.pth")
        member.size = len(data)
        out.addfile(member, io.BytesIO(data))
    server.files["/cut/pretrained_models.tar"] = tar.getvalue()
  import tensorflow as tf  # noqa: PLC0415
  from cyclegan import export  # noqa: PLC0415
  loaded = tf.saved_model.load(export.resolve_version(name)[0])
  rgb = photo(64, 84, seed=2)
  got = loaded.signatures["translate_uint8"](images=tf.constant(rgb[None]))["images"][0]
  want = _torch_uint8(net, rgb)
  assert np.abs(got.numpy().astype(int) - want).max() <= 1 and want.std() > 5
  assert pretrained.is_cached(name)


def test_a_broken_download_resumes_where_it_stopped(server, cache):
  server.files["/cg/zebra2horse.pth"] = _pth(_net(3))
  server.cut_at = 5000
  with pytest.raises(pretrained.DownloadError, match="run again to resume"):
    pretrained.ensure("zebra2horse")
  assert not pretrained.is_cached("zebra2horse")
  assert os.path.getsize(pretrained.download_path("zebra2horse") + ".part") == 5000
  pretrained.ensure("zebra2horse")
  assert server.requests[-1] == ("/cg/zebra2horse.pth", "bytes=5000-")
  assert pretrained.is_cached("zebra2horse")


def test_a_whole_part_file_left_by_a_kill_is_used(server, cache):
  """Killed between the last byte and the rename: the server answers 416 to the resume."""
  data = _pth(_net(7))
  server.files["/cg/orange2apple.pth"] = data
  part = pretrained.download_path("orange2apple") + ".part"
  os.makedirs(os.path.dirname(part))
  with open(part, "wb") as f:
    f.write(data)
  pretrained.ensure("orange2apple")
  assert server.requests == [("/cg/orange2apple.pth", f"bytes={len(data)}-")]
  assert pretrained.is_cached("orange2apple") and not os.path.exists(part)


@pytest.mark.parametrize("case,message", [
    ("html", "sent an HTML page"), ("truncated file", "not a usable checkpoint"),
    ("unexpected keys", "not a usable checkpoint: .*unexpected keys"), ("404", "HTTP 404")])
def test_bad_downloads_are_one_line_and_leave_nothing_trusted(server, cache, case, message):
  data = _pth(_net(4))
  if case == "html":
    server.html = True
  elif case == "truncated file":
    data = data[:len(data) // 2]
  elif case == "unexpected keys":
    state = {f"model.{k}": v for k, v in _net(4).state_dict().items()}
    state["model.99.weight"] = torch.zeros(1)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
  if case != "404":
    server.files["/cg/apple2orange.pth"] = data
  with pytest.raises(pretrained.DownloadError, match=message) as error:
    pretrained.ensure("apple2orange")
  assert "\n" not in str(error.value)
  trusted_nothing, found = _leaves_nothing_trusted(cache)
  assert trusted_nothing and not any(f.endswith(".part") for f in found), found


def test_offline_and_unknown_names_exit_2_in_one_line(tmp_path, server, cache):
  server.shutdown()
  server.server_close()
  (tmp_path / "photos").mkdir()
  Image.fromarray(photo(32, 32)).save(tmp_path / "photos" / "a.png")
  done = _command("cyclegan.translate", "--model", "sat2map", "--input", str(tmp_path / "photos"),
                  "--output", str(tmp_path / "out"), env=cache)
  assert done.returncode == cli.USAGE and "Traceback" not in done.stderr
  lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "cannot reach" in lines[0] and "/cg/sat2map.pth" in lines[0]
  assert os.path.join(cache["CYCLEGAN_HOME"], "downloads", "sat2map.pth") in lines[0]
  with pytest.raises(cli.UserError, match="horse2zebra, zebra2horse"):
    pretrained.ensure("horse2zebra_pretrained")


def test_two_processes_make_one_download_and_both_succeed(server, cache):
  server.files["/cg/map2sat.pth"] = _pth(_net(5))
  runs = [subprocess.Popen([sys.executable, "-m", "cyclegan.pretrained", "download", "map2sat"],
                           cwd=REPO, env={**os.environ, **cache, "TF_CPP_MIN_LOG_LEVEL": "2"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
  outputs = [run.communicate(timeout=600) for run in runs]
  assert [run.returncode for run in runs] == [0, 0], outputs
  assert len(server.requests) == 1
  listed = _command("cyclegan.pretrained", "list", env=cache)
  line = next(l for l in listed.stdout.splitlines() if l.startswith("map2sat "))
  assert "map -> aerial photo" in line and "CycleGAN" in line and "cached" in line


def test_the_server_takes_a_bare_published_name(server, cache):
  pytest.importorskip("starlette", reason="the [serve] extra")
  from cyclegan.serving import http as serving_http  # noqa: PLC0415
  server.files["/cg/style_vangogh.pth"] = _pth(_net(6))
  runners = serving_http.load_runners(None, ["style_vangogh", "mine=style_vangogh"], 1)
  try:
    assert sorted(runners) == ["mine", "style_vangogh"] and len(server.requests) == 1
    assert runners["style_vangogh"].path == os.path.join(pretrained.model_base("style_vangogh"), "1")
  finally:
    for runner in runners.values():
      runner.close()
