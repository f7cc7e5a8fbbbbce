"""Steady video: statistics smoothed over shots, flow blending, cut detection."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cyclegan import any_size
from cyclegan import cut_models
from cyclegan import export
from cyclegan import models
from cyclegan import synthetic
from cyclegan import temporal
from cyclegan import tiling
from cyclegan import translate
from conftest import load_tool


@pytest.fixture(scope="module", params=["cycle_gan", "cut"])
def generator(request):
  keras.utils.set_random_seed(2)
  build = cut_models.cut_generator if request.param == "cut" else models.resnet_generator
  return build(ngf=8, n_blocks=2)


def pan(frames=8, step=3, side=64, seed=4):
  scene = np.concatenate(list(synthetic.warm_scenes(3, 128, seed=seed)), 1)
  return synthetic.camera_pan(scene, frames, side, side, step)


def test_cuts_are_found_and_a_pan_is_one_shot():
  shots = temporal.ShotDetector()
  frames = pan(6)
  other = synthetic.to_domain_b(pan(3, seed=9))  # another scene, other colours
  starts = [shots.starts_shot(f) for f in np.concatenate([frames, other])]
  assert starts == [True, False, False, False, False, False, True, False, False]


def test_with_every_frame_a_new_shot_frames_are_translated_as_images(generator):
  frames = pan(4, side=60)  # 60: padded to a multiple of 4 and cropped back, as images are
  stable = temporal.StableStatistics(generator)
  out = stable(frames, [True] * 4).astype(int)
  alone = any_size.translate_uint8(generator, tf.constant(frames)).numpy().astype(int)
  assert np.abs(out - alone).max() <= 1


def test_the_average_carries_over_from_one_call_to_the_next(generator):
  frames = pan(8)
  starts = [True] + [False] * 7
  together = temporal.StableStatistics(generator)(frames, starts)
  stable = temporal.StableStatistics(generator)
  in_two = np.concatenate([stable(frames[:3], starts[:3]), stable(frames[3:], starts[3:])])
  assert np.abs(together.astype(int) - in_two).max() <= 1
  alone = temporal.StableStatistics(generator)(frames, [True] * 8)
  assert np.abs(together.astype(int) - alone).mean() > 0.1  # smoothing changed something


def test_large_frames_in_tiles_are_smoothed_the_same_way(generator):
  frames = pan(3, side=96)
  shared = tiling.SharedStatistics(generator, halo=16, exact_norms=99)
  stable = temporal.StableStatistics(generator)
  first = stable.tiled(frames[0], True, shared, tile=48)
  np.testing.assert_array_equal(first, shared(frames[0], tile=48))  # a new shot: as an image
  second = stable.tiled(frames[1], False, shared, tile=48)
  assert np.abs(second.astype(int) - shared(frames[1], tile=48)).mean() > 0.01


def test_stabilization_lowers_the_warping_error_of_a_pan(tmp_path, generator):
  """On a pan off the stride grid (3 px per frame), through the command's translator. This
  random-init model flickers far more than trained ones: measured 34.2 -> 15.7 levels (0.46x;
  a trained horse2zebra model: 0.31x, tools/warping_error.py)."""
  model = export.save(generator, str(tmp_path / "a2b"))
  translator = translate.TiledModel(translate.resolve_model(model), "fp32", 0, 0, 0)
  tool = load_tool("warping_error")
  frames = pan(10, step=3)
  per_frame = tool.translate_frames(translator.video_frames(False), frames, 4)
  steady = tool.translate_frames(translator.video_frames(True), frames, 4)
  assert tool.warping_error(frames, 3, 8) == 0
  per_frame_error = tool.warping_error(per_frame, 3, 8)
  assert tool.warping_error(steady, 3, 8) < 0.6 * per_frame_error, per_frame_error
