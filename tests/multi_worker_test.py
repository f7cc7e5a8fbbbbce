"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 with TF_CONFIG."""

import json
import os
import re
import socket
import subprocess
import sys

import tensorflow as tf

from cyclegan import input_pipeline
from conftest import REPO, tiny_config, tiny_flags


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _run_workers(tmp_path, max_steps, *more_flags):
  """Runs two workers to max_steps; each keeps its XLA programs in tmp_path/home<index>."""
  ports = _free_ports(2)
  procs = []
  for index in range(2):
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                 "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2",
           "CYCLEGAN_HOME": str(tmp_path / f"home{index}")}
    env.pop("TF_XLA_FLAGS", None)
    flags = [*tiny_flags(strategy="multi_worker", batch_size=2, max_steps=max_steps),
             *more_flags]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "cyclegan.train", "--workdir", str(tmp_path / "w"), "--export_dir",
         str(tmp_path / "e"), *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  return outputs


def _digest(log, step):
  return re.search(rf"step {step}: weights digest (\w+)", log).group(1)


def test_two_workers_stay_in_sync_and_only_the_chief_writes(tmp_path):
  (chief_out, chief_err), (other_out, other_err) = _run_workers(tmp_path, 3)
  assert _digest(chief_err, 3) == _digest(other_err, 3)
  assert "SavedModels:" in chief_out and "SavedModels:" not in other_out
  assert sorted(os.listdir(tmp_path / "e" / "a2b")) == ["1"]
  assert tf.train.latest_checkpoint(str(tmp_path / "w" / "checkpoints")).endswith("ckpt-3")
  assert sorted(os.listdir(tmp_path / "w")) == [
      "best", "checkpoints", "config.json", "samples", "tensorboard"]

  # Resumed with each network compiled by XLA (--jit_scope networks): the collectives stay
  # TensorFlow's, so CPU workers can run it, and they stay in sync.
  (chief_out, chief_err), (_, other_err) = _run_workers(tmp_path, 5, "--jit_compile")
  for index, err in enumerate((chief_err, other_err)):
    assert "resumed from" in err and "steps 3..5" in err
    assert list((tmp_path / f"home{index}" / "xla_cache").iterdir())
  assert _digest(chief_err, 5) == _digest(other_err, 5)
  assert tf.train.latest_checkpoint(str(tmp_path / "w" / "checkpoints")).endswith("ckpt-5")


def test_each_input_pipeline_reads_its_own_shard(tmp_path):
  config = tiny_config(tmp_path, batch_size=2, synthetic_train=8)
  domains = input_pipeline.load_domains(config)
  seen = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=2)
    batches = list(input_pipeline.train_dataset(config, domains, 0, context).take(8)
                   .as_numpy_iterator())
    assert all(b["a"].shape[0] == 1 for b in batches)  # Per-replica batch: 2 replicas of 1.
    seen.append({b["a"].tobytes() for b in batches})
  assert not seen[0] & seen[1]  # No example read by both workers.
  full = list(input_pipeline.train_dataset(config, domains).take(8).as_numpy_iterator())
  everything = {x.tobytes() for b in full for x in b["a"][:, None]}
  assert seen[0] | seen[1] == everything
