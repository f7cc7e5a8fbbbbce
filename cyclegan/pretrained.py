"""Published models by name: downloaded once, converted once, kept in a cache.

  python -m cyclegan.pretrained list
  python -m cyclegan.pretrained download style_monet horse2zebra_cut
  python -m cyclegan.pretrained remove style_monet
  python -m cyclegan.translate --model style_monet --input photos/ --output monet/

Every command's --model takes a published name where no such path exists
(export.resolve_version). $CYCLEGAN_HOME (default ~/.cache/cyclegan) holds each file as
downloaded (downloads/) and its SavedModel (models/<name>/1/). The names, URLs and directions
come from the two projects' download script and READMEs (junyanz/pytorch-CycleGAN-and-pix2pix
scripts/download_cyclegan_model.sh; taesungp/contrastive-unpaired-translation README).
"""

import contextlib
import fcntl
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from typing import NamedTuple

from cyclegan import cli
from cyclegan import convert_torch
from cyclegan import export

CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
CUT_TAR_URL = "http://efrosgans.eecs.berkeley.edu/CUT/pretrained_models.tar"
CUT_TAR = "cut_pretrained_models.tar"
GENERATOR_MB = 45.5  # a ResNet-9 generator, ngf 64: 11,378,179 float32 parameters


class Published(NamedTuple):
  name: str
  direction: str  # what A -> B means, in words
  source: str  # CycleGAN, CUT or FastCUT


_CYCLEGAN = [
    ("apple2orange", "apple -> orange"), ("orange2apple", "orange -> apple"),
    ("summer2winter_yosemite", "Yosemite in summer -> in winter"),
    ("winter2summer_yosemite", "Yosemite in winter -> in summer"),
    ("horse2zebra", "horse -> zebra"), ("zebra2horse", "zebra -> horse"),
    ("monet2photo", "Monet painting -> photo"), ("style_monet", "photo -> Monet painting"),
    ("style_cezanne", "photo -> Cezanne painting"), ("style_ukiyoe", "photo -> Ukiyo-e print"),
    ("style_vangogh", "photo -> Van Gogh painting"), ("sat2map", "aerial photo -> map"),
    ("map2sat", "map -> aerial photo"),
    ("cityscapes_photo2label", "street photo -> segmentation labels"),
    ("cityscapes_label2photo", "segmentation labels -> street photo"),
    ("facades_photo2label", "facade photo -> labels"),
    ("facades_label2photo", "facade labels -> photo"),
    ("iphone2dslr_flower", "phone photo of a flower -> DSLR (shallow depth of field)")]
_CUT = [("horse2zebra", "horse -> zebra"), ("cat2dog", "cat -> dog (AFHQ faces)"),
        ("cityscapes", "segmentation labels -> street photo")]
PUBLISHED = {p.name: p for p in
             [Published(name, direction, "CycleGAN") for name, direction in _CYCLEGAN] +
             [Published(f"{data}_{kind}", direction, {"cut": "CUT", "fastcut": "FastCUT"}[kind])
              for data, direction in _CUT for kind in ("cut", "fastcut")]}


class DownloadError(cli.UserError):
  """A download that could not be made or is not a usable checkpoint; the message says why."""


def model_base(name):
  return os.path.join(cli.home(), "models", name)


def download_path(name):
  """Where the file as downloaded lives: the .pth, or for CUT's names the one tar of all."""
  if PUBLISHED[name].source == "CycleGAN":
    return os.path.join(cli.home(), "downloads", f"{name}.pth")
  return os.path.join(cli.home(), "downloads", CUT_TAR)


def url(name):
  if PUBLISHED[name].source == "CycleGAN":
    base = os.environ.get("CYCLEGAN_PRETRAINED_URL") or CYCLEGAN_URL
    return f"{base.rstrip('/')}/{name}.pth"
  return os.environ.get("CYCLEGAN_CUT_PRETRAINED_URL") or CUT_TAR_URL


def names_line():
  return ", ".join(PUBLISHED)


def check_name(name):
  if name not in PUBLISHED:
    raise cli.UserError(f"{name} is not a published model; the published ones: {names_line()}")


def is_cached(name):
  return bool(export.find_versions(model_base(name)))


@contextlib.contextmanager
def _lock(path, what):
  """An exclusive lock on `path`.lock, held by one process at a time (others wait, saying so)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(f"{path}.lock", "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process {what}", file=sys.stderr, flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _cut_member(tar, name):
  """The bytes of `<name>_pretrained/latest_net_G.pth` in CUT's tar (at any folder depth)."""
  wanted = f"{name}_pretrained/latest_net_G.pth"
  for member in tar.getmembers():
    if member.isfile() and (member.name == wanted or member.name.endswith("/" + wanted)):
      return tar.extractfile(member).read()
  raise convert_torch.ConversionError(f"the CUT tar has no {wanted}")


def state_dict(name, path):
  """The generator state dict of `name` in its downloaded file."""
  if PUBLISHED[name].source == "CycleGAN":
    return convert_torch.load_state_dict(path)
  try:
    with tarfile.open(path) as tar:
      data = _cut_member(tar, name)
  except tarfile.TarError as e:
    raise convert_torch.ConversionError(f"{path} is not a readable tar ({e})") from e
  return convert_torch.load_state_dict(f"{path}:{name}", data)


def _check_download(name, part):
  """Every generator the file holds reads and fits the converter, else ConversionError."""
  names = [n for n, p in PUBLISHED.items() if download_path(n) == download_path(name)]
  for each in names if PUBLISHED[name].source != "CycleGAN" else [name]:
    convert_torch.generator_layers(state_dict(each, part))


def _fetch(name):
  """Downloads `name`'s file into place: into a .part file (resumed with an HTTP Range where the
  server allows), moved onto its name only once complete and readable."""
  path, address = download_path(name), url(name)
  part = path + ".part"
  have = os.path.getsize(part) if os.path.exists(part) else 0
  headers = {"User-Agent": "cyclegan"} | ({"Range": f"bytes={have}-"} if have else {})
  by_hand = f"put it at {path} by hand and run again"
  try:
    response = urllib.request.urlopen(urllib.request.Request(address, headers=headers),
                                      timeout=30)
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:  # nothing after `have` bytes: the .part is whole, or wrong
      return _move_into_place(name, part, path, address)
    raise DownloadError(f"{address}: HTTP {e.code} {e.reason}; {by_hand}") from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(f"cannot reach {address} ({reason}). Offline? Download it elsewhere, "
                        f"{by_hand}") from None
  with response:
    if "text/html" in response.headers.get("Content-Type", ""):
      raise DownloadError(f"{address} sent an HTML page, not a checkpoint (moved or down?); "
                          f"{by_hand}")
    # A 206 that does not start where the .part ends is not a resume: start again.
    resumed = response.status == 206 and response.headers.get(
        "Content-Range", "").startswith(f"bytes {have}-")
    if response.status == 206 and not resumed:
      os.remove(part)
      raise DownloadError(f"{address}: the server resumed at another byte than asked; run "
                          "again to download it from the start")
    size = response.headers.get("Content-Length", "")
    total = (have if resumed else 0) + int(size) if size.isdigit() else None
    with open(part, "ab" if resumed else "wb") as f, cli.progress_bar(
        total, "B", f"downloading {name}", unit_scale=True, unit_divisor=1024,
        initial=have if resumed else 0) as progress:
      while True:
        try:
          chunk = response.read(1 << 20)
        except (OSError, http.client.HTTPException) as e:
          f.write(getattr(e, "partial", b""))  # what came before the connection broke
          raise DownloadError(f"{address}: the download broke off ({type(e).__name__}); run "
                              "again to resume it") from None
        if not chunk:
          break
        f.write(chunk)
        progress.update(len(chunk))
  if total is not None and os.path.getsize(part) < total:
    raise DownloadError(f"{address}: the connection closed at {os.path.getsize(part)} of "
                        f"{total} bytes; run again to resume it")
  _move_into_place(name, part, path, address)


def _move_into_place(name, part, path, address):
  """The finished .part onto its name if every generator in it reads; else removed."""
  try:
    _check_download(name, part)
  except convert_torch.ConversionError as e:
    os.remove(part)
    raise DownloadError(f"{address} is not a usable checkpoint: {e}") from None
  os.replace(part, path)


def ensure(name):
  """The SavedModel base path of published model `name`, downloaded and converted first where
  the cache lacks it; one process at a time does that, the others wait and reuse it."""
  check_name(name)
  base = model_base(name)
  with _lock(base, f"converting {name}"):
    if is_cached(name):
      return base
    path = download_path(name)
    with _lock(path, f"downloading {os.path.basename(path)}"):
      if not os.path.exists(path):
        _fetch(name)
    generator = convert_torch.to_keras(state_dict(name, path))
    saved = export.save(generator, base, 1)
  print(f"{name}: converted to {saved}", file=sys.stderr, flush=True)
  return base


def remove(name):
  """Removes the model and its download (CUT's tar once no CUT model is left)."""
  check_name(name)
  base, path = model_base(name), download_path(name)
  with _lock(base, f"converting {name}"), _lock(path, f"downloading {os.path.basename(path)}"):
    shutil.rmtree(base, ignore_errors=True)
    sharing = [n for n in PUBLISHED if n != name and download_path(n) == path and is_cached(n)]
    if not sharing:
      for leftover in (path, path + ".part"):
        if os.path.exists(leftover):
          os.remove(leftover)


def _size_mb(folder):
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder)
             for f in files) / 2**20


def describe():
  """One line per published model: name, direction, source, size, cached or not."""
  lines = [f"{'name':<24} {'translates (A -> B)':<58} {'source':<8} size"]
  for p in PUBLISHED.values():
    if is_cached(p.name):
      state = f"cached, {_size_mb(model_base(p.name)):.0f} MB"
    else:
      state = f"download ~{GENERATOR_MB:.0f} MB" if p.source == "CycleGAN" else \
          "download: CUT's tar of all six"
    lines.append(f"{p.name:<24} {p.direction:<58} {p.source:<8} {state}")
  return lines


def main(argv):
  action, names = (argv[1] if len(argv) > 1 else None), argv[2:]
  if action == "list" and not names:
    print("\n".join(describe()))
    print(f"cache: {cli.home()} ($CYCLEGAN_HOME)")
    return 0
  if action in ("download", "remove") and names:
    for name in names:
      check_name(name)
    for name in names:
      if action == "download":
        print(f"{name}: {ensure(name)}")
      else:
        remove(name)
        print(f"{name}: removed")
    return 0
  raise cli.UserError("usage: python -m cyclegan.pretrained list | download NAME... | "
                      "remove NAME...")


if __name__ == "__main__":
  cli.run(main, lambda: None)
