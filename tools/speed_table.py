"""Ours against PyTorch's variants on this machine, in one run: JSON lines, then a table.

  python tools/speed_table.py                      # train 128 and 256 (CUT, FastCUT: 256), translate 512
  python tools/speed_table.py --cut_size 0         # no CUT rows
  python tools/speed_table.py --sizes 128 --steps 3
  python tools/speed_table.py --sizes              # translate 512 and its folder row only
  python tools/speed_table.py --rounds 3           # each cell the median of 3 rounds
  python tools/speed_table.py --fp32               # as on a CPU without bf16
  python tools/speed_table.py --xla networks step  # train rows also with --jit_compile, by scope

On a machine with a GPU, both run on the first GPU (PyTorch with --device cuda), and ours runs
several steps per call as cyclegan.train does there.

Each measurement runs in its own process (tools/benchmark.py for ours with the defaults
`cyclegan.train` picks here, tools/torch_reference.py for PyTorch), so peak RSS is its own.
PyTorch's variants: NCHW and channels_last in fp32, and with bf16 autocast where the CPU has
AVX512_BF16/AMX or the GPU bf16; its best is the fastest of them. Name the CPU (or GPU) beside
any number you report.

The "translate folder" row is what a user gets: `cyclegan.translate` on a folder of JPEGs
(decode, the export's any-size uint8 signature, encode, writes), steady seconds per image
(tools/benchmark.py --what folder). PyTorch has no such command: its cells repeat its bare
generator calls from the translate row, so the last column compares our whole folder path
with PyTorch's fastest bare call.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

TOOLS = os.path.dirname(os.path.abspath(__file__))
FOLDER_WARMUP = 4  # as tools/benchmark.py's: images left out of the steady time
sys.path.insert(0, os.path.join(TOOLS, ".."))

from cyclegan import runtime  # noqa: E402


def _measure(script, args, home=None):
  """The JSON line a benchmark script prints; home: its $CYCLEGAN_HOME (and XLA's cache)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  if home:
    env["CYCLEGAN_HOME"] = home
    env.pop("TF_XLA_FLAGS", None)  # else a cache it names would be read
  done = subprocess.run([sys.executable, os.path.join(TOOLS, script), *args], text=True,
                        capture_output=True, env=env)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    sys.exit(f"error: {script} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
  return json.loads(lines[-1])


def _over_steady(result):
  """The first step's cost beyond a steady step (tracing, graph setup, first use of memory):
  what the issue's table calls the first step, ~0 for PyTorch."""
  return round(result["first_step_s"] - result["median_s"], 2)


def _median_over_rounds(results):
  """One result from several rounds of one measurement: the median of each number shown."""
  combined = dict(results[0])
  for key in ("median_s", "first_step_s", "peak_rss_gb", "peak_gpu_gb"):
    if key in combined:
      combined[key] = statistics.median(result[key] for result in results)
  combined["first_step_over_steady_s"] = statistics.median(map(_over_steady, results))
  return combined


def _label(what, size, model="cycle_gan"):
  if what == "folder":
    return f"translate folder {size} px (ours: JPEGs in and out; PyTorch: its bare call)"
  return f"{what} {size} px" + ("" if model == "cycle_gan" else f" ({model})")


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown CPU"


def _gpu_name():
  """The first GPU's name as TensorFlow sees it, or None without one."""
  import tensorflow as tf  # noqa: PLC0415 (runtime imported it: no second start-up cost)
  gpus = tf.config.list_physical_devices("GPU")
  return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus \
      else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256],
                      help="Square training image sides (none: no training rows).")
  parser.add_argument("--cut_size", type=int, default=256,
                      help="Square image side of the CUT and FastCUT training rows; 0: none.")
  parser.add_argument("--translate_size", type=int, default=512,
                      help="Image side for the translation rows (generator forward, and the "
                           "folder of JPEGs); 0: skip both.")
  parser.add_argument("--folder_images", type=int, default=16,
                      help="JPEGs in the folder row's folder; 0: skip that row.")
  parser.add_argument("--steps", type=int, default=5, help="Timed steps after the first.")
  parser.add_argument("--rounds", type=int, default=1,
                      help="Rounds of every measurement, ours and PyTorch's interleaved; each "
                           "cell is the median over rounds (this machine's speed drifts).")
  parser.add_argument("--xla", nargs="*", default=[], choices=["networks", "step"],
                      help="Train rows also run ours with --jit_compile at each --jit_scope "
                           "named (columns 'ours xla SCOPE'); the last column takes our fastest.")
  parser.add_argument("--fp32", action="store_true",
                      help="Ours in fp32 and PyTorch without bf16 autocast: what a CPU without "
                           "bf16 (where `auto` picks fp32) runs, measured on this one.")
  args = parser.parse_args()
  gpu = _gpu_name()
  device = ["--device", "cuda"] if gpu else []
  variants = [("pytorch nchw", device), ("pytorch channels_last", device + ["--channels_last"])]
  ours_precision = ["--precision", "fp32"] if args.fp32 else []
  has_bf16 = (runtime.gpu_capability() >= runtime.GPU_BF16_CAPABILITY if gpu else
              runtime.cpu_has_bf16())
  if has_bf16 and not args.fp32:
    variants += [("pytorch bf16", device + ["--bf16"]),
                 ("pytorch bf16 channels_last", device + ["--bf16", "--channels_last"])]
  rows = [("train", size, "cycle_gan") for size in args.sizes]
  rows += [("train", args.cut_size, m) for m in ("cut", "fastcut")] if args.cut_size else []
  rows += [("translate", args.translate_size, "cycle_gan")] if args.translate_size else []
  rows += ([("folder", args.translate_size, "cycle_gan")]
           if args.translate_size and args.folder_images else [])
  cpu = _cpu_name() + (" (AVX512_BF16/AMX)" if runtime.cpu_has_bf16() else " (no bf16)")
  if gpu:
    cpu = f"{gpu} (host: {cpu})"
  table = []
  names = [name for name, _ in variants]
  ours_variants = [("ours", [])] + [(f"ours xla {scope}", ["--jit_compile", "--jit_scope", scope])
                                    for scope in dict.fromkeys(args.xla)]
  ours_names = [name for name, _ in ours_variants]
  bare = {}  # PyTorch's translate runs, which the folder row compares with
  for what, size, model in rows:
    common = ["--what", what, "--size", str(size), "--steps", str(args.steps), "--model", model]
    runs = {name: [] for name in [*ours_names, *names]}
    for round_index in range(args.rounds):
      if what == "folder":
        runs["ours"].append(_measure("benchmark.py", [
            "--what", "folder", "--size", str(size), "--images", str(args.folder_images),
            *ours_precision]))
        for name in names:
          runs[name].append(bare[name][round_index])
      else:
        for name, extra in ours_variants if what == "train" else ours_variants[:1]:
          with tempfile.TemporaryDirectory() as home:  # XLA's first step compiles, not loads
            runs[name].append(_measure("benchmark.py", common + ours_precision + extra, home))
        for name, extra in variants:
          runs[name].append(_measure("torch_reference.py", common + extra))
      for name, results in runs.items():
        if results and (what != "folder" or name == "ours"):
          print(json.dumps({"cpu": cpu, "variant": name, "round": round_index, **results[-1]}),
                flush=True)
    ours = {name: _median_over_rounds(runs[name]) for name in ours_names if runs[name]}
    theirs = {name: _median_over_rounds(runs[name]) for name in names}
    best = min(theirs, key=lambda name: theirs[name]["median_s"])
    by_round = [min(runs[name][i]["median_s"] for name in names) /
                min(runs[name][i]["median_s"] for name in ours)
                for i in range(args.rounds)]
    table.append((what, _label(what, size, model), ours, theirs, best, by_round))
    if what == "translate":
      bare = runs

  rounds = f", median over {args.rounds} rounds" if args.rounds > 1 else ""
  print(f"\n{cpu}, batch 1, median of {args.steps} steps after the first{rounds} (seconds)\n")
  print("| | " + " | ".join(ours_names + names) + " | ours vs PyTorch's best |")
  print("|---" * (len(ours_names) + len(names) + 2) + "|")
  for what, label, ours, theirs, best, _ in table:
    cells = [f"{ours[name]['median_s']:.3f} ({ours[name]['precision']})" if name in ours
             else "—" for name in ours_names]
    cells += [f"{theirs[name]['median_s']:.3f}" for name in names]
    fastest = min(ours, key=lambda name: ours[name]["median_s"])
    speedup = theirs[best]["median_s"] / ours[fastest]["median_s"]
    which = f"{fastest} vs {best}" if len(ours_names) > 1 else best
    print(f"| {label} | " + " | ".join(cells) + f" | {speedup:.2f}x ({which}) |")
  for label, key in (("first step", "first_step_s"),
                     ("first step over a steady step", "first_step_over_steady_s"),
                     ("peak RSS (GB)", "peak_rss_gb")) + (
                         (("peak GPU memory (GB)", "peak_gpu_gb"),) if gpu else ()):
    for what, row, ours, theirs, *_ in table:
      cells = [f"{ours[name][key]}" if name in ours else "—" for name in ours_names] + [
          # PyTorch's folder cells are its bare calls': not repeated.
          "—" if what == "folder" else f"{theirs[name][key]}" for name in names]
      print(f"| {label}, {row.split(' (ours')[0]} | " + " | ".join(cells) + " | |")
  if any(what == "folder" for what, *_ in table):
    print(f"\nThe folder row: cyclegan.translate's defaults on {args.folder_images} JPEGs, "
          f"steady seconds per image (images {FOLDER_WARMUP + 1}-{args.folder_images}), first "
          "step from loading the export; PyTorch's cells are its bare generator calls above.")
  if args.rounds > 1:  # The machine drifts: a median can hide a round below the target.
    print("\nOurs vs PyTorch's fastest variant in the same round: " + "; ".join(
        f"{row.split(' (ours')[0]} " + ", ".join(f"{r:.2f}x" for r in by_round)
        for _, row, *_, by_round in table))


if __name__ == "__main__":
  main()
