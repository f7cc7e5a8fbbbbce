"""Sanity check on real photos: a bounded horse2zebra run at 128 px, reported per epoch.

  python tools/horse2zebra_sanity.py --data ../shared/data/horse2zebra --max_steps 3000

Trains the paper's 128 px model (6 residual blocks; ngf 32 to fit the time here) on the folder,
then prints one JSON line per epoch: mean losses over the epoch's steps and the test-split
cycle-reconstruction L1 (A->B->A and B->A->B, on [0, 1]) at the epoch's end, beside the untrained
model's. Losses that fall and reconstructions that beat the untrained ones mean training on real
photos moves the right way; it is not a quality claim.
"""

import collections
import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from cyclegan import config as config_lib  # noqa: E402
from cyclegan import train_lib  # noqa: E402
from cyclegan import workdir as workdir_lib  # noqa: E402

flags.DEFINE_string("data", "../shared/data/horse2zebra", "Folder with trainA/ trainB/ testA/ testB/.")
flags.DEFINE_integer("max_steps", 3000, "Steps in all (about 20 minutes on 2 cores with bf16).")
flags.DEFINE_integer("steps_per_epoch", 500, "Report every this many steps (an 'epoch' here; the "
                     "real one, max(|A|, |B|) = 1334 steps, is too long for this budget).")
flags.DEFINE_string("workdir", None, "Workdir (default: a temporary folder).")
flags.DEFINE_enum("precision", "bf16", ["fp32", "bf16"], "Training precision.")
FLAGS = flags.FLAGS


def _scalars(logdir):
  """{tag: {step: value}} from the run's TensorBoard event files."""
  values = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "scalars":
          values[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
  return values


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="h2z-")
  config = config_lib.make_config(dict(
      name="horse2zebra_sanity", dataset=FLAGS.data, load_size=143, crop_size=128, ngf=32,
      ndf=32, n_blocks=6, precision=FLAGS.precision, max_steps=FLAGS.max_steps, log_every=1,
      image_every=FLAGS.steps_per_epoch, eval_every=FLAGS.steps_per_epoch,
      checkpoint_every=FLAGS.steps_per_epoch, workdir=workdir, export=False))
  untrained = config.replace(max_steps=0, eval_every=1, workdir=os.path.join(workdir, "untrained"))
  train_lib.train(untrained.replace(max_steps=1, lr=0.0))  # One step at lr 0: the initial model.
  baseline = _scalars(workdir_lib.tensorboard_dir(untrained.workdir))
  train_lib.train(config)
  values = _scalars(workdir_lib.tensorboard_dir(workdir))
  print(json.dumps({"epoch": 0, "eval_cycle_l1_a": baseline["eval/cycle_l1_a"][1],
                    "eval_cycle_l1_b": baseline["eval/cycle_l1_b"][1]}))
  for end in range(FLAGS.steps_per_epoch, FLAGS.max_steps + 1, FLAGS.steps_per_epoch):
    steps = range(end - FLAGS.steps_per_epoch + 1, end + 1)
    row = {"epoch": end // FLAGS.steps_per_epoch, "steps": f"{steps[0]}-{end}"}
    for name in ("g_total", "d_total", "cycle_a", "cycle_b", "g_adv_a2b", "d_b"):
      series = values[f"loss/{name}"]
      row[name] = round(sum(series[s] for s in steps) / len(steps), 4)
    row["eval_cycle_l1_a"] = round(values["eval/cycle_l1_a"][end], 4)
    row["eval_cycle_l1_b"] = round(values["eval/cycle_l1_b"][end], 4)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
