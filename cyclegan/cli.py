"""What every command (train, export, translate, evaluate, convert_torch, serve) shares.

Exit codes: 0 done; 1 done, but some inputs failed (each named in the output); 2 nothing done:
bad arguments or data, said in one line on stderr, without a traceback. Each command defines
its flags in `define_flags()`, called only when it runs, so that its module can be imported.
"""

import os
import sys

import tqdm
from absl import app, flags

from cyclegan import quiet

OK, SOME_FAILED, USAGE = 0, 1, 2


def home():
  """This project's cache ($CYCLEGAN_HOME): published models, the FID Inception, XLA's
  compiled steps."""
  return os.path.expanduser(os.environ.get("CYCLEGAN_HOME") or "~/.cache/cyclegan")


class UserError(Exception):
  """Something the person running the command can fix; the message says what, and how."""


def _with_bare_values(argv, bare_values):
  """`--name` given with no value (last, or before another flag) -> `--name=<its bare value>`."""
  out = []
  for i, arg in enumerate(argv):
    name = arg[2:] if arg.startswith("--") else None
    if name in bare_values and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
      arg = f"--{name}={bare_values[name]}"
    out.append(arg)
  return out


def _parse_flags(argv, bare_values=None):
  """A bad or missing flag is a usage error too: one line, exit 2 (absl prints all flags)."""
  argv = _with_bare_values(argv, bare_values or {})
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write("error: " + "; ".join(str(e).splitlines()) + " (see --help)\n")
    sys.exit(USAGE)


def run(main, define_flags, bare_values=None):
  """Defines the flags and runs `main(argv)` under absl; a UserError is one line and exit 2.

  bare_values: {flag name: value} for string flags that may be given alone (`--formats`).
  """
  def guarded(argv):
    quiet.hide_tf_info(flags.FLAGS.verbosity)
    try:
      return main(argv) or OK
    except UserError as e:
      sys.stderr.write(f"error: {e}\n")
      return USAGE
  define_flags()
  app.run(guarded, flags_parser=lambda argv: _parse_flags(argv, bare_values))


def no_arguments(argv):
  """Options are flags: stray positional arguments are a usage error."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; options are flags, see --help")


def progress_bar(total, unit="img", desc=None, **options):
  """Count, rate and ETA on stderr; on a terminal one updating line, else a line per 10 s."""
  return tqdm.tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10, **options)
