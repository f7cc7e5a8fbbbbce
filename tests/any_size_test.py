"""Any image size: the reflect padding every export runs in its graph."""

import numpy as np
import pytest
import tensorflow as tf

from cyclegan import any_size


@pytest.mark.parametrize("n,before,after", [(5, 1, 2), (4, 0, 4), (1, 3, 4), (3, 7, 6), (2, 5, 5)])
def test_reflect_indices_match_numpy_reflect(n, before, after):
  got = tf.gather(tf.range(n), any_size.reflect_indices(n, before, after)).numpy()
  np.testing.assert_array_equal(got, np.pad(np.arange(n), (before, after), mode="reflect"))


@pytest.mark.parametrize("height,width", [(65, 64), (66, 93), (3, 5)])
def test_padding_is_centred_and_reaches_a_multiple_of_four(height, width):
  image = tf.reshape(tf.range(height * width * 3, dtype=tf.float32), [1, height, width, 3])
  padded, top, left = any_size.pad_to_multiple(image)
  assert padded.shape[1] % 4 == 0 and padded.shape[2] % 4 == 0
  assert min(padded.shape[1:3]) >= any_size.MIN_SIDE
  np.testing.assert_array_equal(padded[:, top:top + height, left:left + width], image)
