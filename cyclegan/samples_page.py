"""The page a user opens to look at a training run, <workdir>/samples/index.html (as PyTorch
CycleGAN's web/index.html): each evaluation's sample grids, metrics and alarms, newest first,
with each selection's metric curve and best step on top (a CycleGAN run picks a best step per
direction, A->B and B->A; a CUT run one).

It is one static file beside its PNGs, so it opens from disk (file://) with no server, no
JavaScript and nothing fetched from elsewhere, and the workdir can be copied and still read.
Every file is written atomically: a page reloaded mid-run, or left by a killed run, is whole.
"""

import html
import math
import os
import urllib.parse

from PIL import Image

from cyclegan import files

# The curve's drawing area, in SVG units, and its margins for the axis labels (and, on
# top, for the best point's label: with higher is better it is the highest).
_WIDTH, _HEIGHT = 640, 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 28, 32

_STYLE = """\
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 80rem;
         padding: 0 1rem; color: #222; }
  h1 { margin-bottom: .25rem; }
  h2 { font-size: 1.1rem; margin: 0 0 .25rem; }
  section { border-top: 1px solid #ddd; padding: .75rem 0 1rem; }
  section.best { border: 2px solid #2a7; border-radius: 6px; background: #f2fbf5;
                 padding: .75rem 1rem 1rem; }
  .badge { background: #2a7; color: #fff; border-radius: 4px; padding: 0 .4em;
           font-size: .8rem; vertical-align: middle; }
  .metrics { margin: 0 0 .5rem; color: #444; font-variant-numeric: tabular-nums; }
  .alarms { margin: 0 0 .5rem; padding: .4rem .6rem; list-style: none; background: #fff3e0;
            border-left: 4px solid #e67700; color: #7a3d00; }
  .grids { display: flex; flex-wrap: wrap; gap: 1rem; }
  figure { margin: 0; }
  img { display: block; max-width: 100%; height: auto; background: #eee; }
  figcaption { color: #555; font-size: .9rem; }
  figure.curve { margin-bottom: 1rem; }
  svg { display: block; max-width: 100%; height: auto; }
  svg text { font: 11px system-ui, sans-serif; fill: #444; }
  svg .axis { fill: none; stroke: #999; }
  svg polyline { fill: none; stroke: #36c; stroke-width: 1.5; }
  svg circle.best { fill: #2a7; stroke: #fff; stroke-width: 2; }
  svg text.best { fill: #1a6640; font-weight: bold; paint-order: stroke; stroke: #fff;
                  stroke-width: 3px; }
"""


def save_grids(samples_dir, step, grids):
  """Writes each uint8 [H, W, 3] grid as images/step_<step>_<name>.png; returns their paths
  relative to samples_dir (what the page links), in the dict's order."""
  paths = []
  for name, grid in grids.items():
    path = f"images/step_{step:08d}_{name}.png"
    with files.atomic_open(os.path.join(samples_dir, path), "wb") as f:
      Image.fromarray(grid).save(f, "PNG")
    paths.append(path)
  return paths


def write_index(samples_dir, title, history, selections, higher_is_better):
  """Writes samples_dir/index.html for `history` (oldest first: dicts of step, metrics, grids
  and optional alarms); `selections` are (metric_key, label, best_step) tuples, one per best
  step chosen (best_step None: none yet), all by one kind of metric: `higher_is_better`
  holds for each."""
  bests = [_best(history, key, best_step) for key, _, best_step in selections]
  parts = [
      "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
      f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}</style>\n</head>\n<body>\n"
      f"<h1>{html.escape(title)}</h1>\n",
      _summary(history, selections, higher_is_better, bests),
  ]
  parts.extend(_curve(history, key, label, higher_is_better, best_step)
               for key, label, best_step in selections)
  for entry in reversed(history):
    best_for = [(key, label) for (key, label, _), best in zip(selections, bests) if best is entry]
    parts.append(_section(samples_dir, entry, best_for))
  parts.append("</body>\n</html>\n")
  with files.atomic_open(os.path.join(samples_dir, "index.html"), "wb") as f:
    f.write("".join(parts).encode("utf-8"))


def _best(history, key, best_step):
  """The entry at best_step if it has a finite `key`; else None, as the page would have no
  value to show and no point to mark for it."""
  return next((e for e in history if e["step"] == best_step
               and math.isfinite(e["metrics"].get(key, math.nan))), None)


def _summary(history, selections, higher_is_better, bests):
  """Each selection's best step (linked to its section) and value, and how far the run has
  got."""
  direction = f"({'higher' if higher_is_better else 'lower'} is better)"
  lines = []
  for (key, label, best_step), best in zip(selections, bests):
    name = html.escape(key)
    if best is None:
      chosen = f"none chosen yet, by {name}"
    else:
      chosen = f'<a href="#best-{name}">step {best_step}</a>, {name} {best["metrics"][key]:.4g}'
    lines.append(f'<p class="summary">best {html.escape(label)}: {chosen} {direction}</p>\n')
  if not selections:
    lines.append('<p class="summary">No metric is chosen, so no best step.</p>\n')
  if history:
    plural = "s" if len(history) > 1 else ""
    progress = f"{len(history)} evaluation{plural}, newest step {history[-1]['step']}."
  else:
    progress = "No evaluations yet."
  return "".join(lines) + f"<p>{progress}</p>\n"


def _curve(history, key, label, higher_is_better, best_step):
  """`key` over steps as an inline SVG; empty with fewer than two finite points."""
  points = [(e["step"], e["metrics"][key]) for e in history
            if math.isfinite(e["metrics"].get(key, math.nan))]
  if len(points) < 2:
    return ""
  steps, values = [s for s, _ in points], [v for _, v in points]
  first, last, low, high = min(steps), max(steps), min(values), max(values)
  bottom, right = _HEIGHT - _BOTTOM, _WIDTH - _RIGHT

  def xy(step, value):
    return (_LEFT + _fraction(step, first, last) * (right - _LEFT),
            bottom - _fraction(value, low, high) * (bottom - _TOP))

  name, label = html.escape(key), html.escape(label)
  svg = [
      f'<figure class="curve">\n<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" '
      f'height="{_HEIGHT}" role="img" aria-label="{label}: {name} by step">\n'
      f'<path class="axis" d="M{_LEFT},{_TOP}V{bottom}H{right}"/>\n'
      f'<text x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end">{high:.4g}</text>\n'
      f'<text x="{_LEFT - 6}" y="{bottom}" text-anchor="end">{low:.4g}</text>\n'
      f'<text x="{_LEFT}" y="{bottom + 14}" text-anchor="start">{first}</text>\n'
      f'<text x="{right}" y="{bottom + 14}" text-anchor="end">{last}</text>\n'
      f'<text x="{(_LEFT + right) / 2}" y="{_HEIGHT - 4}" text-anchor="middle">step</text>\n'
  ]
  line = " ".join("{:.1f},{:.1f}".format(*xy(step, value)) for step, value in points)
  svg.append(f'<polyline points="{line}"/>\n')
  best_value = dict(points).get(best_step)
  if best_value is not None:
    x, y = xy(best_step, best_value)
    text = f"best {label}: step {best_step}, {best_value:.4g}"
    anchor = "end" if x > (_LEFT + right) / 2 else "start"
    text_x = x - 8 if anchor == "end" else x + 8
    svg.append(f'<circle class="best" cx="{x:.1f}" cy="{y:.1f}" r="5"><title>{text}</title>'
               f'</circle>\n<text class="best" x="{text_x:.1f}" y="{y - 9:.1f}" '
               f'text-anchor="{anchor}">{text}</text>\n')
  direction = "higher" if higher_is_better else "lower"
  svg.append(f"</svg>\n<figcaption>{label}: {name} by step ({direction} is better)"
             "</figcaption>\n</figure>\n")
  return "".join(svg)


def _fraction(value, low, high):
  """Where `value` sits between low and high, 0 to 1; the middle when they are equal."""
  return (value - low) / (high - low) if high > low else 0.5


def _section(samples_dir, entry, best_for):
  """One evaluation: its step, metrics, alarms and grids; `best_for` is the (metric_key,
  label) of each selection it is the best step of, each with its badge and #best-<key>
  anchor. An element has one id, so anchors past the first, and #step-N then, are spans."""
  step = entry["step"]
  if best_for:
    ids = [f"best-{key}" for key, _ in best_for] + [f"step-{step}"]
    spans = "".join(f'<span id="{html.escape(i)}"></span>' for i in ids[1:])
    badges = "".join(f' <span class="badge">best {html.escape(label)}</span>'
                     for _, label in best_for)
    heading = (f'<section id="{html.escape(ids[0])}" class="best">{spans}\n'
               f"<h2>step {step}{badges}")
  else:
    heading = f'<section id="step-{step}">\n<h2>step {step}'
  metrics = " &middot; ".join(f"{html.escape(k)} {v:.4g}" for k, v in entry["metrics"].items())
  parts = [heading + "</h2>\n", f'<p class="metrics">{metrics}</p>\n' if metrics else ""]
  if entry.get("alarms"):
    parts.append('<ul class="alarms">\n' + "".join(
        f"<li>&#9888; {html.escape(alarm)}</li>\n" for alarm in entry["alarms"]) + "</ul>\n")
  parts.append('<div class="grids">\n')
  for name, path in entry["grids"].items():
    size = _png_size(os.path.join(samples_dir, path))
    dimensions = f' width="{size[0]}" height="{size[1]}"' if size else ""
    parts.append(f'<figure><img src="{html.escape(urllib.parse.quote(path))}"{dimensions} '
                 f'loading="lazy" alt="{html.escape(name)} at step {step}">'
                 f"<figcaption>{html.escape(name)}</figcaption></figure>\n")
  parts.append("</div>\n</section>\n")
  return "".join(parts)


def _png_size(path):
  """The image's (width, height) from its header, so the page reserves each image's space
  before lazy loading fetches it; None when it cannot be read."""
  try:
    with Image.open(path) as image:
      return image.size
  except OSError:
    return None
