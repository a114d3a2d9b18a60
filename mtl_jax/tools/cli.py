"""The command line of every `python -m mtl_jax.<tool>`: absl flags, one convention.

A tool defines its flags when it is imported, in a `flags.FlagValues` of its own, and
hands them to `run`:

  FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
  _WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", flag_values=FLAGS)
  cli.mark_required(FLAGS, ["workdir"])

  def main(argv: list[str]) -> int | None:  # argv: [program, positional arguments...]
    ...  # _WORKDIR.value; raise app.UsageError("...") for a bad command line.

  if __name__ == "__main__":
    cli.run(main, FLAGS)

A FlagValues of its own rather than absl's global `flags.FLAGS`, because tools are imported
together (by the tests; `sweep` imports `ledger`) and several own a flag of the same name
(`--workdir`, `--output`), which one registry would refuse as a duplicate; and so that
`--help` lists the tool's flags and nothing else.

`run(main, FLAGS)` is `absl.app.run(main)` (absl logging, `--verbosity`, `--flagfile`) with:
- `--help` (also `-h`, `-?`, `--helpshort`): the tool's docstring, which shows a working
  command, then its flags with their defaults, on stdout; exit status 0. `--helpfull` adds
  absl's own flags.
- a bad command line (an unknown flag, a bad value, a missing required flag, or an
  `app.UsageError` from `main`): one line `<tool>: error: ...` on stderr, exit status 2.
- `main`'s return value is the exit status (None: 0).
- libraries' INFO lines that a user cannot act on are kept off the console
  (mtl_jax.runtime.console).

`call(main, FLAGS, argv)` runs a tool in this process as that command line would and
returns its exit status (the tests).

Every tool spells a training run's directory `--workdir` and where it writes `--output`;
flag names use underscores (`--max_length`; absl has no dashed aliases); a list is one
comma-separated value (`--methods=sum,pcgrad`). `main.py` keeps absl's global flags: it is
the one program that is not imported beside others.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

from mtl_jax.runtime import console

HELP = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
HELPFULL = ("--helpfull", "-helpfull")

Main = Callable[[list[str]], "int | None"]


class OutputError(ValueError):
  """An output path a tool could not write; the message names it and says what to do."""


def check_output(path: str, flag: str = "--output", directory: bool = False) -> None:
  """Refuses, before a tool's slow work (restoring a model), an output path it could not
  write: one under a file (`FILE/x.csv`: FILE is not a directory), one in a directory it
  may not write to, or (a file output, not `directory`) an existing directory. Creates
  nothing; the tool creates the missing parent directories when it writes."""
  full = os.path.abspath(path)
  if not directory and os.path.isdir(full):
    raise OutputError(f"cannot write {flag}={path}: it is a directory; give a file name")
  parent = os.path.dirname(full)
  while not os.path.lexists(parent):  # The nearest existing ancestor, where makedirs starts.
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    what = "a file, not a directory" if os.path.isfile(parent) else "not a directory"
    raise OutputError(
      f"cannot write {flag}={path}: {parent} is {what}; choose a path in a directory"
    )
  if not os.access(parent, os.W_OK | os.X_OK):
    raise OutputError(
      f"cannot write {flag}={path}: no permission to write in {parent}; "
      "choose a directory you can write"
    )


def mark_required(tool_flags: flags.FlagValues, names: Sequence[str]) -> None:
  """absl's mark_flags_as_required, and "(required)" in each one's --help line."""
  flags.mark_flags_as_required(names, flag_values=tool_flags)
  for name in names:
    tool_flags[name].help += " (required)"


def run(main: Main, tool_flags: flags.FlagValues) -> NoReturn:
  """Runs the tool as a program: `absl.app.run(main)` with the tool's flags (module doc)."""
  console.quiet_libraries()  # Orbax's INFO lines, jax's platform probe (runtime/console.py).
  app.run(
    functools.partial(_main_or_usage_error, main),
    flags_parser=functools.partial(_parse_program, main, tool_flags),
  )
  raise AssertionError("app.run returned")  # It always exits.


def call(main: Main, tool_flags: flags.FlagValues, argv: Sequence[str]) -> int:
  """The exit status of the command line `argv` (program name first), run in this process:
  what `run` does, but with no absl logging set-up and no absl flags beyond the tool's.
  Its one-line errors go to stderr as the program's do."""
  try:
    return _status(_main_or_usage_error(main, parse(main, tool_flags, argv)))
  except SystemExit as e:
    return _status(e.code)


def parse(main: Main, tool_flags: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """Parses `argv` (program name first) into `tool_flags`, from their defaults (a tool may be
  parsed again in one process); returns [program, positional arguments...]. --help prints
  the tool's help and exits 0; a bad flag exits 2 after one line."""
  _help_if_asked(main, tool_flags, argv)
  if tool_flags.is_parsed():
    tool_flags.unparse_flags()
  try:
    return tool_flags(list(argv))
  except flags.Error as e:
    _fail(argv[0], e)


def usage(main: Main, tool_flags: flags.FlagValues, full: bool = False) -> str:
  """The tool's docstring and its flags (with `full`, absl's flags too)."""
  doc = (sys.modules[main.__module__].__doc__ or "").strip()
  # get_help's lines are indented but for one header per module, naming the module's file.
  own = [x for x in tool_flags.get_help(include_special_flags=False).splitlines() if x[:1] == " "]
  text = f"{doc}\n\nflags:\n" + "\n".join(own) + "\n"
  if full:
    return text + "\nabsl's flags:\n" + flags.FLAGS.get_help()
  return text + "\nabsl's own flags (--verbosity, --flagfile, ...): --helpfull"


def _parse_program(main: Main, tool_flags: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """app.run's flags parser: absl's own flags (which app.run needs parsed), then the tool's,
  so that a misspelt flag is refused with the tool's flag names as suggestions."""
  _help_if_asked(main, tool_flags, argv)  # Before absl's own --help, which lists none of them.
  try:
    rest = flags.FLAGS(list(argv), known_only=True)
  except flags.Error as e:
    _fail(argv[0], e)
  return parse(main, tool_flags, rest)


def _help_if_asked(main: Main, tool_flags: flags.FlagValues, argv: Sequence[str]) -> None:
  argv = list(argv)
  options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  if any(a in HELP or a in HELPFULL for a in options):
    print(usage(main, tool_flags, full=any(a in HELPFULL for a in options)))
    sys.exit(0)


def _main_or_usage_error(main: Main, argv: list[str]) -> int | None:
  console.quiet_libraries()
  try:
    return main(argv)
  except app.UsageError as e:
    _fail(argv[0], e)


def _fail(program: str, error: Exception) -> NoReturn:
  name = os.path.splitext(os.path.basename(program))[0]
  print(f"{name}: error: {' '.join(str(error).split())}", file=sys.stderr)
  sys.exit(2)


def _status(code) -> int:
  """sys.exit's argument as the exit status the interpreter would give (a message: 1)."""
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)
  return 1
