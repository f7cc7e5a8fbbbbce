"""Videos through `python -m cyclegan.translate`: containers, timing, audio, failures."""

import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from cyclegan import synthetic
from cyclegan import video
from conftest import REPO

FRAMES, RATE, HEIGHT, WIDTH = 12, 8, 48, 64


def pan_frames(frames=FRAMES, height=HEIGHT, width=WIDTH):
  scene = synthetic.warm_scenes(1, 128, seed=5)[0]
  return synthetic.camera_pan(scene, frames, height, width, step=4)


def write_clip(path, codec="libx264", audio=True, frames=FRAMES, height=HEIGHT, width=WIDTH):
  """A pan at RATE fps (constant), with a mono 440 Hz AAC track as long as the video."""
  with av.open(str(path), "w") as out:
    stream = out.add_stream(codec, rate=RATE)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if str(path).endswith(".avi"):
      stream.options = {"bf": "0"}  # AVI has no presentation times: display order
    sound = out.add_stream("aac" if codec == "libx264" else "libopus", rate=48000) if audio else None
    for rgb in pan_frames(frames, height, width):
      out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    out.mux(stream.encode(None))
    if sound:
      wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000 * frames // RATE) / 48000)
      for start in range(0, wave.size, 960):
        frame = av.AudioFrame.from_ndarray(wave[None, start:start + 960].astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate = 48000
        out.mux(sound.encode(frame))
      out.mux(sound.encode(None))


def describe(path):
  """What must survive translation: frames, rate, size, duration, each frame's time, audio."""
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    size, rate = (stream.codec_context.height, stream.codec_context.width), stream.average_rate
    times = [float(frame.time) for frame in container.decode(stream)]
  with av.open(str(path)) as container:
    audio = [bytes(p) for p in container.demux(*container.streams.audio) if p.size
             ] if container.streams.audio else []
  return {"frames": len(times), "size": size, "rate": rate, "times": times, "audio": audio}


def darker(frames):
  return frames // 2


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.mov", "libx264"),
                                        ("clip.mkv", "libx264"), ("clip.avi", "libx264"),
                                        ("clip.webm", "libvpx-vp9")])
def test_containers_keep_frames_timing_size_and_audio(tmp_path, name, codec):
  source, target = tmp_path / name, tmp_path / "out" / name
  write_clip(source, codec, audio=name != "clip.avi")
  video.translate(str(source), str(target), darker, batch_size=5)
  want, got = describe(source), describe(target)
  assert got["frames"] == want["frames"] == FRAMES
  assert got["size"] == want["size"] and got["rate"] == want["rate"] == RATE
  np.testing.assert_allclose(got["times"], want["times"], atol=1e-3)
  assert got["audio"] == want["audio"]  # packets copied, not re-encoded
  assert (name == "clip.avi") == (not want["audio"])
  with av.open(str(target)) as container:  # the translation is in the frames
    first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
  assert abs(first.mean() - pan_frames()[0].mean() / 2) < 3
  assert sorted(os.listdir(target.parent)) == [name]  # no temporary file left


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_keep_frames_durations_and_loop(tmp_path, fmt):
  source = tmp_path / f"anim.{fmt.lower()}"
  frames = [Image.fromarray(f) for f in pan_frames(5)]
  frames[0].save(source, format=fmt, save_all=True, append_images=frames[1:],
                 duration=[100, 200, 100, 300, 100], loop=2)
  assert video.is_animation(str(source)) and not video.is_animation(str(REPO / "README.md"))
  target = tmp_path / "out" / source.name
  video.translate(str(source), str(target), darker, batch_size=2)
  with Image.open(target) as image:
    assert image.n_frames == 5 and image.size == (WIDTH, HEIGHT) and image.info["loop"] == 2
    durations = []
    for i in range(5):
      image.seek(i)
      image.load()
      durations.append(image.info["duration"])
    assert durations == [100, 200, 100, 300, 100]


def test_odd_sized_video_keeps_its_size(tmp_path):
  source = tmp_path / "odd.mkv"
  with av.open(str(source), "w") as out:  # yuv444p allows odd sides
    stream = out.add_stream("libx264", rate=RATE)
    stream.width, stream.height, stream.pix_fmt = 63, 45, "yuv444p"
    for rgb in pan_frames(4, 45, 63):
      out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
    out.mux(stream.encode(None))
  video.translate(str(source), str(tmp_path / "odd_out.mkv"), darker, batch_size=3)
  assert describe(tmp_path / "odd_out.mkv")["size"] == (45, 63)
  assert describe(tmp_path / "odd_out.mkv")["frames"] == 4


def test_an_interrupted_video_leaves_nothing(tmp_path):
  source, target = tmp_path / "clip.mp4", tmp_path / "out" / "clip.mp4"
  write_clip(source)
  calls = []

  def interrupted(frames):
    calls.append(len(frames))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return frames

  with pytest.raises(KeyboardInterrupt):
    video.translate(str(source), str(target), interrupted, batch_size=4)
  assert not target.exists() and os.listdir(target.parent) == []


def test_a_broken_video_is_one_line_and_the_others_go_on(tmp_path, tiny_cut_export):
  """The command on a folder mixing a video, an image and a truncated video; the model is a
  CUT export (translate_test runs CycleGAN's on an animation, also a video)."""
  inputs = tmp_path / "in"
  inputs.mkdir()
  write_clip(inputs / "good.mp4")
  (inputs / "broken.mp4").write_bytes((inputs / "good.mp4").read_bytes()[:300])
  Image.fromarray(pan_frames(1)[0]).save(inputs / "still.png")
  model = os.path.dirname(tiny_cut_export)
  done = subprocess.run(
      [sys.executable, "-m", "cyclegan.translate", "--model", model, "--input", str(inputs),
       "--output", str(tmp_path / "out"), "--batch_size", "4"],
      capture_output=True, text=True, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  assert "translated 2 of 3 files" in done.stdout
  assert [line for line in done.stdout.splitlines() if "broken.mp4" in line]
  assert sorted(os.listdir(tmp_path / "out")) == ["good.mp4", "still.png"]
  assert describe(tmp_path / "out" / "good.mp4")["frames"] == FRAMES
  assert "frame/s" in done.stderr  # progress: frames per second and ETA
