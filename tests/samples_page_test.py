"""The samples page as a user opens it: its files on disk, its HTML, and headless Chromium
rendering it from file:// (images loaded, a curve per direction drawn, each best step marked)."""

import os

import numpy as np
import pytest
from PIL import Image

from cyclegan import samples_page
from conftest import headless_chromium

TITLE = "horse <&> zebra <script>alert(1)</script>"
ALARM = "<script>alert(2)</script> D loss & G loss diverge"
STEPS = (250, 500, 750, 1000)
A2B = (float("nan"), 15.2, 17.4123, 16.9)  # The first has no finite value: not plotted.
B2A = (14.0, 16.5, 15.1, 16.0)
# A CycleGAN run's best step per direction: here each is another step.
SELECTIONS = [("a2b_psnr", "A->B", 750), ("b2a_psnr", "B->A", 500)]
# Both directions' best at one step: the section needs both anchors.
SAME_BEST = [("a2b_psnr", "A->B", 750), ("b2a_psnr", "B->A", 750)]
# Different widths, so a test tells which grid an <img> shows.
GRID_SHAPES = {"a_to_b": (24, 40, 3), "b_to_a": (24, 32, 3)}


def _run(samples_dir, selections=SELECTIONS):
  """A run's four evaluations, with random grids saved as training saves them."""
  rng = np.random.default_rng(0)
  history, grids = [], {}
  for step, a2b, b2a in zip(STEPS, A2B, B2A):
    arrays = {name: rng.integers(0, 256, shape, dtype=np.uint8)
              for name, shape in GRID_SHAPES.items()}
    paths = samples_page.save_grids(samples_dir, step, arrays)
    grids.update(zip(paths, arrays.values()))
    history.append({"step": step,
                    "metrics": {"a2b_psnr": a2b, "b2a_psnr": b2a, "fid": 90.0 - step / 100},
                    "grids": dict(zip(arrays, paths)),
                    "alarms": [ALARM] if step == STEPS[-1] else []})
  history[0].pop("alarms")  # Older entries may have none.
  samples_page.write_index(samples_dir, TITLE, history, selections, True)
  return history, grids


def _page(samples_dir):
  return (samples_dir / "index.html").read_text(encoding="utf-8")


def _curves(samples_dir):
  return _page(samples_dir).count("<svg")


def test_grids_are_saved_as_pngs_at_the_paths_returned(tmp_path):
  _, grids = _run(tmp_path)
  assert list(grids)[:2] == ["images/step_00000250_a_to_b.png", "images/step_00000250_b_to_a.png"]
  for path, array in grids.items():
    with Image.open(tmp_path / path) as image:
      np.testing.assert_array_equal(np.asarray(image), array)


def test_every_file_is_in_place_and_no_temporary_is_left(tmp_path):
  _, grids = _run(tmp_path)
  _run(tmp_path)  # Rewriting replaces the files.
  with pytest.raises(TypeError):  # Pillow has no float64 RGB: the PNG fails mid-write.
    samples_page.save_grids(tmp_path, 1250, {"a_to_b": np.zeros((24, 40, 3))})
  written = {os.path.relpath(os.path.join(folder, name), tmp_path).replace(os.sep, "/")
             for folder, _, names in os.walk(tmp_path) for name in names}
  assert written == {"index.html", *grids}


def test_evaluations_are_listed_newest_first_with_each_best_marked(tmp_path):
  _run(tmp_path)
  page = _page(tmp_path)
  headings = [page.index(f"<h2>step {step}") for step in STEPS]
  assert headings == sorted(headings, reverse=True)
  assert page.count('class="badge"') == 2 and page.count('<section id="best-') == 2
  assert page.index('<section id="best-a2b_psnr" class="best"><span id="step-750"></span>') < (
      page.index('<h2>step 750 <span class="badge">best A-&gt;B</span></h2>')) < (
          page.index('<section id="best-b2a_psnr" class="best"><span id="step-500"></span>')) < (
              page.index('<h2>step 500 <span class="badge">best B-&gt;A</span></h2>'))
  assert all(page.count(f'id="step-{step}"') == 1 for step in STEPS)  # Every step linkable.
  assert ('<p class="summary">best A-&gt;B: <a href="#best-a2b_psnr">step 750</a>, '
          "a2b_psnr 17.41 (higher is better)</p>") in page
  assert ('<p class="summary">best B-&gt;A: <a href="#best-b2a_psnr">step 500</a>, '
          "b2a_psnr 16.5 (higher is better)</p>") in page
  assert "a2b_psnr 16.9 &middot; b2a_psnr 16 &middot; fid 80" in page  # 4 significant digits.
  assert page.count('loading="lazy"') == len(STEPS) * len(GRID_SHAPES)
  assert 'width="40" height="24"' in page


def test_a_step_best_for_both_directions_has_both_anchors(tmp_path):
  _run(tmp_path, SAME_BEST)
  page = _page(tmp_path)
  assert page.count('<section id="best-') == 1 and page.count('class="badge"') == 2
  assert ('<section id="best-a2b_psnr" class="best"><span id="best-b2a_psnr"></span>'
          '<span id="step-750"></span>\n<h2>step 750 <span class="badge">best A-&gt;B</span> '
          '<span class="badge">best B-&gt;A</span></h2>') in page
  assert all(page.count(f'id="step-{step}"') == 1 for step in STEPS)
  assert '<a href="#best-a2b_psnr">step 750</a>, a2b_psnr 17.41' in page
  assert '<a href="#best-b2a_psnr">step 750</a>, b2a_psnr 15.1' in page


def test_title_and_alarms_are_escaped(tmp_path):
  _run(tmp_path)
  page = _page(tmp_path)
  assert "<script" not in page.lower()
  assert "<title>horse &lt;&amp;&gt; zebra &lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
  assert "&lt;script&gt;alert(2)&lt;/script&gt; D loss &amp; G loss diverge" in page
  assert page.count('class="alarms"') == 1


def test_a_curve_per_selection_needs_two_points_with_its_metric(tmp_path):
  history, _ = _run(tmp_path)
  assert _curves(tmp_path) == 2
  assert 'aria-label="A-&gt;B: a2b_psnr by step"' in _page(tmp_path)
  assert "<figcaption>B-&gt;A: b2a_psnr by step (higher is better)</figcaption>" in _page(tmp_path)
  samples_page.write_index(tmp_path, "run", history[:2], [("a2b_psnr", "A->B", 500),
                                                          ("b2a_psnr", "B->A", 500)], False)
  page = _page(tmp_path)
  assert _curves(tmp_path) == 1  # Step 250's a2b_psnr is NaN: one point; b2a_psnr has two.
  assert 'aria-label="B-&gt;A: b2a_psnr by step"' in page
  assert 'best A-&gt;B: <a href="#best-a2b_psnr">step 500</a>, a2b_psnr 15.2 (lower is better)' in (
      page)


def test_none_chosen_where_no_step_or_no_value(tmp_path):
  history, _ = _run(tmp_path)
  # Step 250's a2b_psnr is NaN: no value to show, so no best either.
  samples_page.write_index(tmp_path, "run", history, [("a2b_psnr", "A->B", 250),
                                                      ("b2a_psnr", "B->A", None)], True)
  page = _page(tmp_path)
  assert "best A-&gt;B: none chosen yet, by a2b_psnr (higher is better)</p>" in page
  assert "best B-&gt;A: none chosen yet, by b2a_psnr (higher is better)</p>" in page
  assert "best-" not in page and 'class="badge"' not in page and "<circle" not in page
  assert _curves(tmp_path) == 2
  samples_page.write_index(tmp_path, "run", history, [], True)
  page = _page(tmp_path)
  assert '<p class="summary">No metric is chosen, so no best step.</p>' in page
  assert "best-" not in page and _curves(tmp_path) == 0


def test_page_in_headless_chromium(tmp_path):
  from selenium.webdriver.support.ui import WebDriverWait

  samples_dir = tmp_path / "samples"
  history, _ = _run(samples_dir)
  browser = headless_chromium(tmp_path)
  try:
    browser.get((samples_dir / "index.html").as_uri())
    # Lazy images load once near the viewport: scroll to the first one still waiting.
    images = WebDriverWait(browser, 20).until(lambda b: b.execute_script(
        "const images = [...document.images];"
        "const waiting = images.find(i => !(i.complete && i.naturalWidth > 0));"
        "if (waiting) { waiting.scrollIntoView(); return null; }"
        "return images.map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]);"))
    expected = [[path, GRID_SHAPES[name][1], GRID_SHAPES[name][0]]
                for entry in reversed(history) for name, path in entry["grids"].items()]
    assert images == expected
    text = browser.execute_script("return document.body.innerText")
    assert "best A->B: step 750, a2b_psnr 17.41 (higher is better)" in text
    assert "best B->A: step 500, b2a_psnr 16.5 (higher is better)" in text
    curves = browser.execute_script(  # Each curve's points, and which of them is marked best.
        "return [...document.querySelectorAll('svg')].map(svg => {"
        "  const line = svg.querySelector('polyline'), best = svg.querySelector('circle.best');"
        "  const points = [...Array(line.points.numberOfItems).keys()]"
        "      .map(i => line.points.getItem(i));"
        "  const marked = points.findIndex(p => Math.abs(p.x - best.cx.baseVal.value) < 0.5"
        "      && Math.abs(p.y - best.cy.baseVal.value) < 0.5);"
        "  return [svg.getAttribute('aria-label'), points.length, marked, best.textContent,"
        "          line.getBBox().width, best.getBBox().width]; })")
    # Step 250's NaN is left out of A->B's curve: its best, step 750, is its 2nd point.
    assert [c[:4] for c in curves] == [
        ["A->B: a2b_psnr by step", 3, 1, "best A->B: step 750, 17.41"],
        ["B->A: b2a_psnr by step", 4, 1, "best B->A: step 500, 16.5"]]
    assert all(c[4] > 100 and c[5] > 0 for c in curves), curves
    headings = ("return arguments[0].map(i => document.getElementById(i).closest('section')"
                ".querySelector('h2').textContent)")
    assert browser.execute_script(headings, ["best-a2b_psnr", "best-b2a_psnr"]) == [
        "step 750 best A->B", "step 500 best B->A"]
    assert browser.execute_script(headings, [f"step-{step}" for step in STEPS]) == [
        "step 250", "step 500 best B->A", "step 750 best A->B", "step 1000"]
    summary_links = browser.execute_script(
        "return [...document.querySelectorAll('.summary a')].map(a => a.hash.slice(1))")
    assert summary_links == ["best-a2b_psnr", "best-b2a_psnr"]
    links = browser.execute_script(  # Nothing but its PNGs and itself: opens from a copy too.
        "return [...document.querySelectorAll('[src], [href], script, link')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href') || e.tagName)")
    assert links and all(link.startswith(("images/", "#")) for link in links), links
    browser.save_screenshot(str(tmp_path / "page.png"))
    samples_page.write_index(samples_dir, TITLE, history, SAME_BEST, True)
    browser.refresh()
    text = browser.execute_script("return document.body.innerText")
    assert "best A->B: step 750, a2b_psnr 17.41" in text
    assert "best B->A: step 750, b2a_psnr 15.1" in text
    assert browser.execute_script(headings, ["best-b2a_psnr"]) == ["step 750 best A->B best B->A"]
    assert browser.execute_script(
        "const sections = arguments[0].map(i => document.getElementById(i).closest('section'));"
        "return sections.every(s => s === sections[0]) && sections[0].classList.contains('best')",
        ["best-a2b_psnr", "best-b2a_psnr", "step-750"])
  finally:
    browser.quit()
