"""Alarms: signs that a run has failed while its losses stay finite, each a warning line that
names the step, what it means and what to try (non-finite losses stop the run: train_lib).

Thresholds, and why:
- collapse: the outputs' spread across held-out images below SPREAD_MIN of the inputs'. A
  translation keeps most of the variety of its inputs (near 1); a generator that paints one
  image whatever it gets scores near 0.
- identity: outputs within CHANGE_MIN (0.5%, 1.3 grey levels on average) of their inputs.
  Re-encoding a photo as JPEG changes it more; a translation that recolours a tenth of the
  image by a third of the range changes it 3%.
- discriminator wins: at every logged step over a stretch (STRETCH_FRACTION of the run, at
  least STRETCH_LOGS logged steps) its loss is below D_NEAR_ZERO while the generator's
  adversarial loss is above G_HIGH: with LSGAN that is D(fake) ~ 0.1 or less against a
  balance of 0.5 (G's loss 0.25); with the vanilla loss D gives fakes under 5%.
"""

import collections

SPREAD_MIN = 0.1
CHANGE_MIN = 0.005
D_NEAR_ZERO = 0.05
G_HIGH = {"lsgan": 0.8, "vanilla": 3.0}
STRETCH_FRACTION = 0.05
STRETCH_LOGS = 10

ARROWS = {"a2b": "A->B", "b2a": "B->A"}


def from_evaluation(step, values, model="cycle_gan"):
  """{alarm name: message} from one held-out evaluation's values (evaluation.Evaluator)."""
  raised = {}
  for direction, arrow in ARROWS.items():
    spread, change = values.get(f"{direction}_spread"), values.get(f"{direction}_change")
    if spread is not None and spread < SPREAD_MIN:
      raised[f"collapse_{direction}"] = (
          f"step {step}: alarm: the {arrow} outputs of the held-out images are nearly "
          f"identical to each other (spread {spread:.3f} of the inputs', alarm under "
          f"{SPREAD_MIN}): the generator ignores its input (mode collapse). Try again from an "
          "earlier checkpoint with a lower --lr")
    if change is not None and change < CHANGE_MIN:
      raised[f"identity_{direction}"] = (
          f"step {step}: alarm: the {arrow} outputs nearly equal their inputs (mean change "
          f"{change:.4f}, alarm under {CHANGE_MIN}): nothing has been learned yet. Try more "
          "steps, " + ("a lower --lambda_identity" if model == "cycle_gan" else
                       "a lower --lambda_nce") + ", or check that the A and B images differ")
  return raised


class DiscriminatorWatch:
  """Follows the logged losses; `update` returns {alarm name: message} when a discriminator
  has been winning for the whole stretch."""

  def __init__(self, config, total_steps):
    self.stretch = max(STRETCH_LOGS * config.log_every, int(total_steps * STRETCH_FRACTION))
    self.g_high = G_HIGH[config.gan_mode]
    self.pairs = ({"b": ("d_b", "g_adv_a2b"), "a": ("d_a", "g_adv_b2a")}
                  if config.model == "cycle_gan" else {"b": ("d_total", "g_gan")})
    self.points = collections.deque()

  def update(self, step, losses):
    self.points.append((step, losses))
    while len(self.points) > 1 and self.points[1][0] <= step - self.stretch:
      self.points.popleft()
    if self.points[0][0] > step - self.stretch:
      return {}  # not a whole stretch seen yet
    raised = {}
    for domain, (d_name, g_name) in self.pairs.items():
      if all(v[d_name] < D_NEAR_ZERO and v[g_name] > self.g_high for _, v in self.points):
        raised[f"discriminator_wins_{domain}"] = (
            f"step {step}: alarm: discriminator {domain.upper()} wins: its loss stayed under "
            f"{D_NEAR_ZERO} and the generator's adversarial loss ({g_name}) over "
            f"{self.g_high} for the last {step - self.points[0][0]} steps, so the generator "
            "gets no useful gradient. Try an earlier checkpoint with a smaller --ndf or "
            "--n_layers_d" + (", or --gan_mode lsgan" if self.g_high == G_HIGH["vanilla"] else ""))
    return raised
