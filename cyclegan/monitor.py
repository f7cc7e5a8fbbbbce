"""What a run watches besides its losses: held-out evaluations (metrics, the best checkpoint,
the samples page) and alarms. Every worker of a run evaluates, so that all take the same
decisions (an alarm that stops the run); the chief alone writes files.
"""

import math

import tensorflow as tf
from absl import logging

from cyclegan import alarms
from cyclegan import best_checkpoint
from cyclegan import config as config_lib
from cyclegan import evaluation
from cyclegan import images as images_lib
from cyclegan import metrics
from cyclegan import samples_page
from cyclegan import workdir as workdir_lib

_ARROWS = {"a2b": "A->B", "b2a": "B->A"}

# Images per domain a run evaluates on (the built-in dataset's 64 held-out pairs).
EVAL_IMAGES = 64


def _uint8_translation(generator):
  """uint8 batches -> uint8 through a generator in this process, as an export would."""
  @tf.function(reduce_retracing=True, autograph=False)
  def translate(images):
    return images_lib.through_unit_range(generator, images)
  return translate


def eval_every(config, domains):
  """--eval_every resolved: -1 is each checkpoint where the data has a test split."""
  if config.eval_every >= 0:
    return config.eval_every
  return config.checkpoint_every if "testA" in domains and "testB" in domains else 0


def _inception(config):
  """(model, kind) for KID/FID, or None: --inception auto without weights goes on without."""
  if config.inception == "none":
    return None
  try:
    return metrics.inception(config.inception)
  except metrics.MissingWeightsError as e:
    if config.inception != "auto":
      raise config_lib.ConfigError(str(e)) from None
    return None


class Monitor:
  """Call `losses` at each logged step and `evaluate` when `due`; each returns the alarms it
  raised ({name: message}), already logged as warnings and written to TensorBoard."""

  def __init__(self, config, state, domains, workdir, chief, start, total_steps, summaries):
    self.config, self.workdir, self.chief, self.summaries = config, workdir, chief, summaries
    self.every = eval_every(config, domains)
    self.watch = alarms.DiscriminatorWatch(config, total_steps)
    self.warned = set()
    if not self.every:
      return
    split = "test" if "testA" in domains and "testB" in domains else "train"
    self.evaluator = evaluation.Evaluator(
        config, {"a": domains[f"{split}A"], "b": domains[f"{split}B"]}, EVAL_IMAGES)
    self.translations = {direction: _uint8_translation(state.models[name])
                         for direction, name in (("a2b", "generator_a2b"),
                                                 ("b2a", "generator_b2a"))
                         if name in state.models}
    self.inception = _inception(config)
    self.metric, why = best_checkpoint.choose_metric(
        config.best_metric, self.evaluator.has_pairs, self.inception is not None)
    if self.metric in ("psnr", "ssim") and not self.evaluator.has_pairs:
      raise config_lib.ConfigError(f"--best_metric {self.metric} needs ground-truth pairs, "
                                   "which only the built-in dataset has: use kid, fid or swd")
    if self.metric in ("kid", "fid") and not self.inception:
      raise config_lib.ConfigError(f"--best_metric {self.metric} needs Inception weights: "
                                   + str(self._missing_inception()))
    self.history = workdir_lib.read_evaluations(workdir, up_to=start)
    self.best = best_checkpoint.read(workdir)
    logging.info("held-out evaluation every %d steps on the %s split (%d images per domain)%s; "
                 "best checkpoint by %s (%s)", self.every, split,
                 len(self.evaluator.images["a"]),
                 f", Inception: {self.inception[1]}" if self.inception else "", self.metric, why)

  @staticmethod
  def _missing_inception():
    try:
      metrics.inception_file("auto")
    except metrics.MissingWeightsError as e:
      return e
    return "--inception is none"

  def due(self, step, last_step):
    return bool(self.every) and (step % self.every == 0 or step == last_step)

  def _report(self, step, possible, raised):
    """Warns about each alarm raised (a standing one once, until it clears); TensorBoard gets
    1 for each raised and 0 for each of `possible` that was not."""
    for name, message in raised.items():
      if name not in self.warned:
        logging.warning("%s", message)
    self.warned = (self.warned - set(possible)) | set(raised)
    self.summaries.scalars(step, {name: float(name in raised) for name in possible},
                           prefix="alarm/")
    return raised

  def losses(self, step, values):
    raised = self.watch.update(step, values)
    possible = [f"discriminator_wins_{domain}" for domain in self.watch.pairs]
    return self._report(step, possible, raised)

  def evaluate(self, step, save_checkpoint):
    """One held-out evaluation at `step`; save_checkpoint() -> the path of a checkpoint at
    `step` (saved if there is none), called when this step is the best so far."""
    values, grids = self.evaluator.heldout(self.translations, self.inception)
    self.summaries.scalars(step, values, prefix="eval/")
    shown = [f"{d}_{m}" for d in self.translations for m in (self.metric, "swd")]
    logging.info("step %d held-out: %s", step, " ".join(
        f"{k}={values[k]:.4g}" for k in dict.fromkeys(shown + ["cycle_l1_a", "cycle_l1_b"])
        if k in values))
    raised = alarms.from_evaluation(step, values)
    possible = [f"{alarm}_{direction}" for alarm in ("collapse", "identity")
                for direction in self.translations]
    self._report(step, possible, raised)
    records = {}
    for direction in self.translations:
      value = values.get(f"{direction}_{self.metric}")
      if best_checkpoint.is_better(self.metric, value, self.best.get(direction)):
        records[direction] = {"step": step, "metric": self.metric, "value": value,
                              "metrics": values}
    if records:
      path = save_checkpoint()
      self.best.update(records)
      if self.chief:
        best_checkpoint.keep(self.workdir, path, records)
      logging.info("step %d is the best so far (%s) by %s: kept in %s", step,
                   ", ".join(f"{_ARROWS[d]} {r['value']:.4g}" for d, r in records.items()),
                   self.metric, best_checkpoint.folder(self.workdir))
    if self.chief:
      self._write_page(step, values, grids, raised)
    return raised

  def _write_page(self, step, values, grids, raised):
    folder = workdir_lib.samples_dir(self.workdir)
    paths = samples_page.save_grids(folder, step, grids)
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    self.history = [r for r in self.history if r["step"] != step] + [
        {"step": step, "metrics": finite, "grids": dict(zip(grids, paths)),
         "alarms": list(raised.values())}]
    workdir_lib.write_evaluations(self.workdir, self.history)
    selections = [(f"{d}_{self.metric}", _ARROWS[d],
                   self.best[d]["step"] if d in self.best else None) for d in self.translations]
    samples_page.write_index(folder, self.config.name, self.history, selections,
                             best_checkpoint.METRICS[self.metric])
