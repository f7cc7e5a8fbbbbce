"""Unpaired training data from the built-in dataset, an image folder, or TFDS `cycle_gan`.

Every domain is random-access (an index -> image function) and the order of the examples is a
pure function of (seed, epoch), with augmentation keyed by the example's global index. So the
stream from any step onwards can be rebuilt exactly, and resuming at step k needs no replay:
the index stream is skipped before anything is read or decoded.
"""

import dataclasses
import logging
import os
import socket
import urllib.parse
from typing import Callable

import tensorflow as tf

from cyclegan import cli
from cyclegan import images
from cyclegan import synthetic
from cyclegan.config import SYNTHETIC

SPLITS = ("trainA", "trainB", "testA", "testB")


class DataError(cli.UserError, ValueError):
  """Data that cannot be used; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: `load(index)` gives a uint8 [H, W, 3] image, index in [0, size)."""
  name: str
  size: int
  load: Callable[[tf.Tensor], tf.Tensor]


def _array_domain(name, arrays):
  arrays = tf.constant(arrays)
  return Split(name, int(arrays.shape[0]), lambda i: tf.gather(arrays, i))


def _encoded_domain(name, encoded):
  encoded = tf.constant(encoded, dtype=tf.string)
  return Split(name, int(encoded.shape[0]), lambda i: images.decode_rgb(tf.gather(encoded, i)))


def _file_domain(name, paths):
  paths = tf.constant(paths, dtype=tf.string)
  return Split(name, int(paths.shape[0]),
                lambda i: images.decode_rgb(tf.io.read_file(tf.gather(paths, i))))


def _without_autotune_model(ds):
  """No tf.data autotuning thread: AUTOTUNE maps use every core, prefetch buffers grow as needed.

  The thread sleeps for periods that double to a minute, and in TF 2.21 an iterator's
  destruction can miss its wake-up and wait out the period (cancelled while its callbacks
  run, the thread goes back to sleep): the built-in default run sat 8-23 s after its last
  step in 8 of 17 runs; without the thread, in none of 6 (same step time and input speed).
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


# --- Folders ---------------------------------------------------------------------------------

def decodable(paths):
  """The paths that decode; the others are logged once each. Decodes in parallel with tf.data
  (as stored: turning a decodable image upright cannot fail, so the check skips it)."""
  if not paths:
    return []
  ds = tf.data.Dataset.from_tensor_slices(paths).map(
      lambda p: (p, tf.shape(images.decode_stored(tf.io.read_file(p)))),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = _without_autotune_model(ds.ignore_errors())
  good = {p.decode() for p, _ in ds.as_numpy_iterator()}
  for path in paths:
    if path not in good:
      logging.warning("skipping %s: it is not a readable image", path)
  return [p for p in paths if p in good]


def _folder_domains(folder, splits):
  domains = {}
  for split in splits:
    path = os.path.join(folder, split)
    if not os.path.isdir(path):
      if split.startswith("train"):
        raise DataError(f"{folder} has no {split}/ folder: put the domain's training images in "
                        f"{path}/ (and the other domain's in {split[:-1]}{'B' if split[-1] == 'A' else 'A'}/)")
      continue
    paths = decodable(images.find_images(path, images.GRAPH_EXTENSIONS))
    if not paths:
      if split.startswith("train"):
        raise DataError(f"{path} has no readable images "
                        f"({', '.join(images.GRAPH_EXTENSIONS)})")
      continue
    domains[split] = _file_domain(split, paths)
  return domains


# --- TFDS ------------------------------------------------------------------------------------

def tfds_configs():
  import tensorflow_datasets as tfds
  return sorted(tfds.builder_cls("cycle_gan").builder_configs)


def reachable(url, timeout=5.0):
  """Whether a TCP connection to the URL's host opens: TFDS would otherwise retry for minutes."""
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def _prepare_tfds(builder):
  if builder.is_prepared():
    return
  from tensorflow_datasets.image_classification import cycle_gan
  url = cycle_gan._DL_URLS[builder.builder_config.name]  # pylint: disable=protected-access
  if not reachable(url):
    raise DataError(
        f"TFDS cycle_gan/{builder.builder_config.name} is not in {builder.data_dir_root} and "
        f"{urllib.parse.urlsplit(url).hostname} cannot be reached: connect to the internet once, "
        f"copy a prepared TFDS data_dir here (--tfds_data_dir), or pass a folder with trainA/ trainB/")
  logging.info("downloading and preparing TFDS cycle_gan/%s", builder.builder_config.name)
  builder.download_and_prepare()


def _tfds_domains(name, splits, data_dir):
  import tensorflow_datasets as tfds
  builder = tfds.builder(f"cycle_gan/{name}", data_dir=data_dir or None)
  _prepare_tfds(builder)
  domains = {}
  for split in splits:
    # Keep the encoded bytes (a few hundred MB at most for these sets) for random access.
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    encoded = [example["image"] for example in ds.as_numpy_iterator()]
    if not encoded:
      raise DataError(f"TFDS cycle_gan/{name} split {split} is empty")
    domains[split] = _encoded_domain(split, encoded)
  return domains


# --- All sources -----------------------------------------------------------------------------

def has_pairs(config):
  """Whether the test split pairs each A with its true B (ground truth for paired metrics):
  so for the built-in dataset, whose B is a known function of A."""
  return config.dataset == SYNTHETIC


def load_domains(config, splits=("trainA", "trainB")):
  """The requested splits of `config.dataset`; train splits must exist, test splits may not."""
  if config.dataset == SYNTHETIC:
    arrays = synthetic.make_splits(config.synthetic_size, config.synthetic_train,
                                   config.synthetic_test)
    return {s: _array_domain(s, arrays[s]) for s in splits}
  if os.path.isdir(config.dataset):
    return _folder_domains(config.dataset, splits)
  if os.sep in config.dataset or config.dataset.startswith("."):
    raise DataError(f"dataset folder {config.dataset} does not exist")
  if config.dataset not in tfds_configs():
    raise DataError(f"--dataset {config.dataset!r} is neither a folder nor a TFDS cycle_gan config;"
                    f" use 'synthetic', a folder with trainA/ trainB/, or one of {tfds_configs()}")
  train = [s for s in splits if s.startswith("train")]
  test = [s for s in splits if s.startswith("test")]
  return _tfds_domains(config.dataset, train + test, config.tfds_data_dir)


# --- Preprocessing ---------------------------------------------------------------------------

def _resize(image, height, width):
  """Bicubic with antialiasing (as PIL, which the reference uses), clipped to the uint8 range."""
  image = tf.image.resize(image, [height, width], method="bicubic", antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


def _round4(x):
  """The reference's __make_power_2(base=4): round to the nearest multiple of 4 (half to even)."""
  return tf.maximum(4, tf.cast(tf.round(tf.cast(x, tf.float64) / 4.0), tf.int32) * 4)


def fixed_size(config):
  """Whether training images have one shape (needed for batches > 1)."""
  return "crop" in config.preprocess


def resized_size(height, width, config, load_size=None):
  """The size the reference resizes a training image to before cropping (int32 scalars);
  load_size: instead of config.load_size (a scalar tensor)."""
  load = config.load_size if load_size is None else load_size
  crop = config.crop_size
  if config.preprocess == "resize_and_crop":
    return tf.convert_to_tensor(load), tf.convert_to_tensor(load)
  if config.preprocess == "crop":  # No resize, unless smaller than the crop (the reference fails).
    scale = tf.maximum(1.0, crop / tf.cast(tf.minimum(height, width), tf.float64))
    grow = lambda n: tf.cast(tf.math.ceil(tf.cast(n, tf.float64) * scale), tf.int32)
    return grow(height), grow(width)
  if config.preprocess.startswith("scale_width"):
    # __scale_width: width load_size, height by the aspect ratio but at least crop_size.
    scaled = tf.cast(tf.floor(tf.cast(load, tf.float64) * tf.cast(height, tf.float64) /
                              tf.cast(width, tf.float64)), tf.int32)
    height, width = tf.maximum(scaled, crop), tf.cast(load, tf.int32)
    if config.preprocess == "scale_width_and_crop":
      return height, width
  # none, and scale_width's size: sides must be multiples of 4 for the generator. The
  # reference rounds so for `none` and fails for `scale_width` when a side is not one.
  return _round4(height), _round4(width)


def augmentation(seed, height, width, config):
  """(top, left, flip): the reference's random crop corner (0, 0 without a crop) and flip coin."""
  draw = lambda k, limit: tf.random.stateless_uniform(
      [], tf.random.experimental.stateless_fold_in(seed, k), maxval=limit, dtype=tf.int32)
  flip = draw(2, 2) == 1
  if not fixed_size(config):
    return tf.constant(0), tf.constant(0), flip
  return draw(0, height - config.crop_size + 1), draw(1, width - config.crop_size + 1), flip


def preprocess_train(image, config, seed, load_size=None):
  """uint8 [H, W, 3] -> float32 in [-1, 1], as the reference's transforms; seed: int32 [2];
  load_size: instead of config.load_size.

  resize_and_crop: load_size square, random crop_size crop. crop: random crop at full size.
  scale_width: width load_size, aspect kept (height at least crop_size). scale_width_and_crop:
  that, then a random crop_size crop. none: sides rounded to multiples of 4. Then a random
  horizontal flip unless --noflip.
  """
  shape = tf.shape(image)
  height, width = resized_size(shape[0], shape[1], config, load_size)
  image = tf.cast(image, tf.float32)
  if height != shape[0] or width != shape[1]:  # The reference leaves such images untouched.
    image = _resize(image, height, width)
  top, left, flip = augmentation(seed, height, width, config)
  if fixed_size(config):
    image = image[top:top + config.crop_size, left:left + config.crop_size]
    image.set_shape([config.crop_size, config.crop_size, 3])
  if config.flip and flip:
    image = image[:, ::-1]
  return images.to_unit_range(image)


def preprocess_eval(image, config):
  """Deterministic: resized to crop_size (square) for the fixed-size modes."""
  image = tf.cast(image, tf.float32)
  if fixed_size(config):
    image = _resize(image, config.crop_size, config.crop_size)
  else:
    shape = tf.shape(image)
    image = _resize(image, _round4(shape[0]), _round4(shape[1]))
  return image / 127.5 - 1.0


# --- The training stream ---------------------------------------------------------------------

def steps_per_epoch(domains, global_batch):
  """An epoch is max(|A|, |B|) examples, as in the reference."""
  return max(1, max(domains["trainA"].size, domains["trainB"].size) // global_batch)


def _epoch_order(n, length, seed):
  """`length` indices into [0, n): back-to-back random permutations, so each image is seen evenly."""
  rounds = -(-length // n)
  keys = tf.random.stateless_uniform([rounds, n], seed)
  return tf.reshape(tf.argsort(keys, axis=1), [-1])[:length]


def example_indices(size_a, size_b, examples_per_epoch, seed, start_example):
  """(example id, index into A, index into B), infinitely, from `start_example` on."""
  def epoch(e):
    base = tf.stack([tf.cast(seed, tf.int64), e])
    order_a = _epoch_order(size_a, examples_per_epoch, tf.random.experimental.stateless_fold_in(base, 0))
    order_b = _epoch_order(size_b, examples_per_epoch, tf.random.experimental.stateless_fold_in(base, 1))
    ids = e * examples_per_epoch + tf.range(examples_per_epoch, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((ids, order_a, order_b))
  first_epoch = start_example // examples_per_epoch
  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
  return ds.skip(start_example - first_epoch * examples_per_epoch)


def train_dataset(config, domains, start_step=0, input_context=None):
  """Per-replica batches {"a", "b"} for the steps from `start_step` on, for one input pipeline."""
  global_batch = config.batch_size
  examples_per_epoch = steps_per_epoch(domains, global_batch) * global_batch
  ds = example_indices(domains["trainA"].size, domains["trainB"].size, examples_per_epoch,
                       config.seed, start_step * global_batch)
  per_replica_batch = global_batch
  if input_context is not None:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    per_replica_batch = input_context.get_per_replica_batch_size(global_batch)

  def load(example_id, index_a, index_b):
    seed = tf.stack([tf.constant(config.seed, tf.int64), example_id])
    seed_a = tf.random.experimental.stateless_fold_in(seed, 0)
    seed_b = tf.random.experimental.stateless_fold_in(seed, 1)
    load_size = None
    if not config.jitter_in_decay:  # CUT's loader: crop_size from the first decay epoch on
      in_decay = example_id // examples_per_epoch >= config.epochs
      load_size = tf.where(in_decay, config.crop_size, config.load_size)
    return {"a": preprocess_train(domains["trainA"].load(index_a), config, seed_a, load_size),
            "b": preprocess_train(domains["trainB"].load(index_b), config, seed_b, load_size)}

  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(per_replica_batch, drop_remainder=True)
  return _without_autotune_model(ds.prefetch(tf.data.AUTOTUNE))


def same_size_batches(images, batch_size):
  """Consecutive runs of same-shape arrays, at most batch_size long (for batching by size)."""
  batch = []
  for image in images:
    if batch and (image.shape != batch[0].shape or len(batch) == batch_size):
      yield batch
      batch = []
    batch.append(image)
  if batch:
    yield batch


def resize_square(image, size):
  """uint8 [H, W, 3] -> uint8 [size, size, 3], resized as training images are: one size for
  every held-out image of a run, whatever sizes the files have."""
  return tf.cast(tf.round(_resize(tf.cast(image, tf.float32), size, size)), tf.uint8)


def sample_images(domain, config):
  """The first 4 images of a domain, preprocessed for display (TensorBoard grids), as a batch."""
  images = [preprocess_eval(domain.load(tf.constant(i)), config)
            for i in range(min(4, domain.size))]
  if not fixed_size(config):
    images = images[:1]  # Sizes differ: a batch of one.
  return tf.stack(images)

