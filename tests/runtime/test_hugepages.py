"""The command-line programs re-execute once with huge pages for malloc, when it helps."""

import os
import platform
import subprocess
import sys

import pytest

from mtl_jax.runtime.hugepages import TUNABLE, environment_with_huge_pages

MADVISE = "always [madvise] never\n"


def test_adds_the_tunable_only_when_it_changes_something():
  env = environment_with_huge_pages({"PATH": "/bin"}, MADVISE, "glibc")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}
  kept = environment_with_huge_pages(
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, MADVISE, "glibc"
  )
  assert kept["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"
  assert environment_with_huge_pages({}, "[always] madvise never", "glibc") is None
  assert environment_with_huge_pages({}, "always madvise [never]", "glibc") is None
  assert environment_with_huge_pages({}, MADVISE, "") is None  # musl, or not Linux.
  # The user's own choice wins, whichever it is.
  assert (
    environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE, "glibc")
    is None
  )


def _thp_mode():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return f.read()
  except OSError:
    return ""


reexecutes = pytest.mark.skipif(
  sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or "[madvise]" not in _thp_mode(),
  reason="needs Linux, glibc, THP madvise",
)


@reexecutes
def test_program_reexecutes_once_with_the_tunable(tmp_path):
  script = tmp_path / "prog.py"
  script.write_text(
    "import os, sys\n"
    "print('start', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], flush=True)\n"
    "from mtl_jax.runtime import hugepages\n"
    "hugepages.reexec_with_huge_pages()\n"
    "print('running', os.environ.get('GLIBC_TUNABLES'), os.getpid())\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run(
    [sys.executable, str(script), "--flag=1"], env=env, capture_output=True, text=True, check=True
  ).stdout.splitlines()
  assert out[0] == "start None ['--flag=1']"
  assert out[1] == f"start {TUNABLE} ['--flag=1']"  # Same arguments, once.
  assert out[2].startswith(f"running {TUNABLE} ")
  assert len(out) == 3


@reexecutes
@pytest.mark.parametrize("command", [["main.py"], ["-m", "mtl_jax", "train"]])
def test_the_trainer_is_imported_once_after_the_reexecution(tmp_path, command):
  """main.py and `mtl-jax train` re-execute before importing the trainer (jax, flax, orbax,
  scipy: seconds of CPU), not after: `python -X importtime` lists each import once. (A
  config that loads, so that the trainer is imported, and then fails its check.)"""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run(
    [
      sys.executable,
      "-X",
      "importtime",
      *command,
      "--config=configs/default.py",
      f"--workdir={tmp_path / 'run'}",
      "--config.grad.method=no_such_method",
    ],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
  )
  assert out.returncode != 0 and "no_such_method" in out.stderr, out.stderr[-2000:]
  imported = [line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if "|" in line]
  assert imported.count("mtl_jax.runtime.hugepages") == 2  # Once before, once after.
  assert imported.count("mtl_jax.train") == 1
