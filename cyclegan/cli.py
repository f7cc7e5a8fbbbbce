"""What every command (train, export, translate, evaluate, convert_torch, serve) shares.

Exit codes: 0 done; 1 done, but some inputs failed (each named in the output); 2 nothing done:
bad arguments or data, said in one line on stderr, without a traceback. Each command defines
its flags in `define_flags()`, called only when it runs, so that its module can be imported.
"""

import sys

from absl import app, flags

OK, SOME_FAILED, USAGE = 0, 1, 2


class UserError(Exception):
  """Something the person running the command can fix; the message says what, and how."""


def _parse_flags(argv):
  """A bad or missing flag is a usage error too: one line, exit 2 (absl prints all flags)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write("error: " + "; ".join(str(e).splitlines()) + " (see --help)\n")
    sys.exit(USAGE)


def run(main, define_flags):
  """Defines the flags and runs `main(argv)` under absl; a UserError is one line and exit 2."""
  def guarded(argv):
    try:
      return main(argv) or OK
    except UserError as e:
      sys.stderr.write(f"error: {e}\n")
      return USAGE
  define_flags()
  app.run(guarded, flags_parser=_parse_flags)


def no_arguments(argv):
  """Options are flags: stray positional arguments are a usage error."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; options are flags, see --help")
