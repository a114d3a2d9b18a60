"""mtl_jax.tools.cli: every `python -m mtl_jax.<tool>` follows one absl convention; the tools import
together without clashing flags, --help lists a tool's own flags, a bad command line is one
line and exit status 2, and every command line the docs show uses flags the tool has."""

from __future__ import annotations

import glob
import importlib
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from mtl_jax.study import publish
from mtl_jax.tools import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ("sweep", "export", "embed", "diagnose", "recon", "predict", "bench", "ledger")
# Where commands are shown: the package, the docs, the scripts, a study's recorded command.
DOCUMENTS = (
  "mtl_jax/**/*.py",
  "*.md",
  "docs/*.md",
  "scripts/*.py",
  "configs/**/*.py",
  "results/*/*.json",
)


def tool(name: str):
  """The module holding a tool's code (`python -m mtl_jax.NAME` runs it through an alias)."""
  module = {"sweep": "study.sweep", "ledger": "study.publish"}.get(name, f"tools.{name}")
  return importlib.import_module(f"mtl_jax.{module}")


def test_every_tool_has_its_own_flags_and_they_import_together():
  modules = [tool(name) for name in TOOLS]  # One process: no DuplicateFlagError.
  for module in modules:
    assert isinstance(module.FLAGS, flags.FlagValues) and module.FLAGS is not flags.FLAGS
    assert callable(module.main)
  export, diagnose = tool("export").FLAGS, tool("diagnose").FLAGS
  assert {"workdir", "output"} <= set(export) & set(diagnose)
  # (Set diagnose's first: a test of diagnose run earlier in this process parsed them.)
  diagnose.unparse_flags()
  diagnose(["diagnose", "--workdir=/d"])
  export(["export", "--workdir=/a", "--output=/b"])  # Parsing one tool's flags...
  assert diagnose["workdir"].value == "/d"  # ...leaves another's alone.
  export.unparse_flags()
  diagnose.unparse_flags()
  assert "workdir" not in flags.FLAGS  # Nothing leaks into absl's global flags.


@pytest.mark.parametrize("name", TOOLS)
def test_help_is_the_docstring_and_the_tools_own_flags(name, capsys):
  module = tool(name)
  assert cli.call(module.main, module.FLAGS, [name, "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(module.__doc__.strip().splitlines()[0])
  assert f"python -m mtl_jax.{name}" in out  # A working command.
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+)", out, re.M))
  assert listed == set(module.FLAGS)
  assert "--verbosity" not in out.split("flags:\n", 1)[1].split("\n\n")[0]


@pytest.mark.parametrize("name", TOOLS)
def test_a_bad_flag_is_one_line_and_exit_status_2(name, capsys):
  module = tool(name)
  assert cli.call(module.main, module.FLAGS, [name, "--no_such_flag=1"]) == 2
  assert capsys.readouterr().err.splitlines() == [
    f"{name}: error: Unknown command line flag 'no_such_flag'"
  ]


def test_required_flags_and_stray_arguments(capsys):
  export = tool("export")
  assert cli.call(export.main, export.FLAGS, ["export", "--output=x"]) == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("export: error: flag --workdir=None: Flag --workdir must have a value")
  assert cli.call(export.main, export.FLAGS, ["export", "--workdir=w", "--output=o", "extra"]) == 2
  assert capsys.readouterr().err.splitlines() == ["export: error: unexpected arguments: ['extra']"]
  assert cli.call(publish.main, publish.FLAGS, ["ledger", "report"]) == 2
  assert capsys.readouterr().err.startswith("ledger: error: expected one of: report DIR; readme")


def test_as_a_program(tmp_path):
  """Through absl.app.run: --help on stdout with exit status 0, absl's own flags accepted,
  a misspelt flag refused with the tool's flag names as suggestions."""

  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "mtl_jax.diagnose", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )

  shown = run("--help")
  assert shown.returncode == 0 and "--from_checkpoint" in shown.stdout
  assert "python -m mtl_jax.diagnose --workdir=WORKDIR" in shown.stdout
  bad = run("--workdr", str(tmp_path))
  assert bad.returncode == 2
  assert bad.stderr.splitlines() == [
    "diagnose: error: Unknown command line flag 'workdr'. Did you mean: workdir ?"
  ]
  missing = run(f"--workdir={tmp_path / 'nope'}", "--verbosity=1")
  assert missing.returncode == 2
  assert missing.stderr.splitlines() == [f"diagnose: error: workdir {tmp_path / 'nope'} not found"]


def _documented_commands() -> list[tuple[str, str, str]]:
  """(file, tool, command line) of every `python -m mtl_jax.<tool> ...` shown in the repo."""
  found = []
  for pattern in DOCUMENTS:
    for path in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True)):
      with open(path) as f:
        text = f.read().replace("\\\\\n", "\\\n")  # A continuation inside a docstring.
      for m in re.finditer(
        r"python -m mtl_jax\.(?:tools\.|study\.)?(\w+)((?:\\\n|[^\n`\"])*)", text
      ):
        found.append((os.path.relpath(path, REPO), m.group(1), m.group(2)))
  return found


def test_documented_command_lines_use_the_tools_flags():
  commands = _documented_commands()
  assert {t for _, t, _ in commands} == set(TOOLS)
  for path, name, line in commands:
    assert name in TOOLS, f"{path}: `python -m mtl_jax.{name}` is not a command-line tool"
    known = set(tool(name).FLAGS) | {"help", "helpfull"}
    for flag in re.findall(r"(?<![\w-])--([A-Za-z][\w-]*)", line):
      assert flag in known, f"{path}: `python -m mtl_jax.{name} ... --{flag}`: no such flag"


@pytest.mark.parametrize(
  "name, output, args",
  [
    ("export", "afile/hf", []),
    ("embed", "afile/e.npz", ["--input=in.txt"]),
    ("predict", "afile/x.csv", ["--input=in.txt", "--task=sst"]),
    ("predict", "afile/deeper/x.csv", ["--input=in.txt", "--task=sst"]),
    ("embed", ".", ["--input=in.txt"]),
  ],
)
def test_an_output_under_a_file_is_refused_before_restoring(
  name, output, args, tmp_path, monkeypatch, capsys
):
  """`--output=FILE/x`: one line saying FILE is not a directory, before the model is restored
  (which took ~10 s and then failed with FileExistsError's traceback)."""
  from mtl_jax import train

  def restore(workdir):
    raise AssertionError("restored before checking --output")

  monkeypatch.setattr(train, "load_trained", restore)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  (tmp_path / "run" / "config.json").write_text("{}")
  (tmp_path / "afile").write_text("x")
  (tmp_path / "in.txt").write_text("a cat\n")
  module = tool(name)
  status = cli.call(module.main, module.FLAGS, [name, "--workdir=run", f"--output={output}", *args])
  err = capsys.readouterr().err
  why = (
    "it is a directory; give a file name"
    if output == "."
    else f"{tmp_path / 'afile'} is a file, not a directory; choose a path in a directory"
  )
  assert status == 1 and err == f"error: cannot write --output={output}: {why}\n"
  assert sorted(os.listdir(tmp_path)) == ["afile", "in.txt", "run"]
