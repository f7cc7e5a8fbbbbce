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


def _inception(config, has_pairs):
  """((model, kind) for KID/FID or None, why none). With --inception auto, data with ground
  truth goes without (PSNR tells more there, and Inception costs seconds per evaluation)
  unless --best_metric asks for KID or FID; so does a machine without the weights."""
  if config.inception == "none":
    return None, "--inception none"
  if config.inception == "auto" and has_pairs and config.best_metric not in ("kid", "fid"):
    return None, "the data has ground truth (--inception auto)"
  try:
    return metrics.inception(config.inception), None
  except metrics.MissingWeightsError as e:
    if config.inception != "auto":
      raise config_lib.ConfigError(str(e)) from None
    return None, str(e)


def _finite(values):
  return {k: v for k, v in values.items() if math.isfinite(v)}


class Monitor:
  """Call `losses` at each logged step and `evaluate` when `due`; each returns the alarms it
  raised ({name: message}), already logged as warnings and written to TensorBoard.

  `agree(flag)` is True where any worker's flag is: the decisions that make workers save or
  stop are taken together, so that a near tie or a GPU's nondeterminism cannot split them."""

  def __init__(self, config, state, domains, workdir, chief, start, total_steps, summaries,
               agree=bool):
    self.config, self.workdir, self.chief, self.summaries = config, workdir, chief, summaries
    self.agree = agree
    self.every = eval_every(config, domains)
    self.watch = alarms.DiscriminatorWatch(config, total_steps)
    self.warned, self.pending = set(), {}
    if not self.every:
      return
    split = "test" if "testA" in domains and "testB" in domains else "train"
    self.evaluator = evaluation.Evaluator(
        config, {"a": domains[f"{split}A"], "b": domains[f"{split}B"]}, EVAL_IMAGES,
        size=config.crop_size)
    self.translations = {direction: _uint8_translation(state.models[name])
                         for direction, name in (("a2b", "generator_a2b"),
                                                 ("b2a", "generator_b2a"))
                         if name in state.models}
    self.inception, no_inception = _inception(config, self.evaluator.has_pairs)
    self.metric, why = best_checkpoint.choose_metric(
        config.best_metric, self.evaluator.has_pairs, self.inception is not None)
    if self.metric in ("psnr", "ssim") and not self.evaluator.has_pairs:
      raise config_lib.ConfigError(f"--best_metric {self.metric} needs ground-truth pairs, "
                                   "which only the built-in dataset has: use kid, fid or swd")
    if self.metric in ("kid", "fid") and not self.inception:
      raise config_lib.ConfigError(f"--best_metric {self.metric} needs Inception weights: "
                                   f"{no_inception}")
    self.history = workdir_lib.read_evaluations(workdir, up_to=start)
    self.best = (best_checkpoint.forget_after(workdir, start) if chief else
                 {d: r for d, r in best_checkpoint.read(workdir).items() if r["step"] <= start})
    logging.info("held-out evaluation every %d steps on the %s split (%d images per domain, "
                 "%d px); KID/FID: %s; best checkpoint by %s (%s)", self.every, split,
                 len(self.evaluator.images["a"]), config.crop_size,
                 f"on {self.inception[1]}'s Inception" if self.inception else
                 f"off ({no_inception})", self.metric, why)

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
    self.pending.update(raised)  # shown on the page with the next evaluation
    return self._report(step, possible, raised)

  def evaluate(self, step, save_checkpoint):
    """One held-out evaluation at `step`; save_checkpoint() -> the path of a checkpoint at
    `step` (saved if there is none), called when this step is the best so far."""
    values, grids = self.evaluator.heldout(self.translations, self.inception)
    values = _finite(values)
    self.summaries.scalars(step, values, prefix="eval/")
    shown = [f"{d}_{m}" for d in self.translations for m in (self.metric, "swd")]
    logging.info("step %d held-out: %s", step, " ".join(
        f"{k}={values[k]:.4g}" for k in dict.fromkeys(shown + ["cycle_l1_a", "cycle_l1_b"])
        if k in values))
    raised = alarms.from_evaluation(step, values, self.config.model)
    possible = [f"{alarm}_{direction}" for alarm in ("collapse", "identity")
                for direction in self.translations]
    self._report(step, possible, raised)
    kind = self.inception[1] if self.inception and self.metric in ("kid", "fid") else None
    records = {}
    for direction in self.translations:
      value = values.get(f"{direction}_{self.metric}")
      if best_checkpoint.is_better(self.metric, value, self.best.get(direction), kind):
        records[direction] = {"step": step, "metric": self.metric, "inception": kind,
                              "value": value, "metrics": values}
    if self.agree(bool(records)):
      path = save_checkpoint()
      if records:
        self.best.update(records)
        if self.chief:
          best_checkpoint.keep(self.workdir, path, records)
        logging.info("step %d is the best so far (%s) by %s: kept in %s", step,
                     ", ".join(f"{alarms.ARROWS[d]} {r['value']:.4g}" for d, r in records.items()),
                     self.metric, best_checkpoint.folder(self.workdir))
    if self.chief:
      self._write_page(step, values, grids, list({**self.pending, **raised}.values()))
    self.pending = {}
    return raised

  def _write_page(self, step, values, grids, messages):
    folder = workdir_lib.samples_dir(self.workdir)
    paths = samples_page.save_grids(folder, step, grids)
    self.history = [r for r in self.history if r["step"] != step] + [
        {"step": step, "metrics": values, "grids": dict(zip(grids, paths)), "alarms": messages}]
    workdir_lib.write_evaluations(self.workdir, self.history)
    selections = [(f"{d}_{self.metric}", alarms.ARROWS[d],
                   self.best[d]["step"] if d in self.best else None) for d in self.translations]
    samples_page.write_index(folder, self.config.name, self.history, selections,
                             best_checkpoint.METRICS[self.metric])
