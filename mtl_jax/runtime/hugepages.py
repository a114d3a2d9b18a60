"""Transparent huge pages for XLA:CPU's buffers (Linux with glibc).

XLA:CPU allocates the step's temporary buffers with malloc, and glibc serves such large
blocks with fresh mmaps that are returned at the end of every step. Each step then
faults in (and the kernel zeroes) gigabytes in 4 KiB pages, which costs far more than
writing into memory already mapped. With glibc's `glibc.malloc.hugetlb=1` tunable those
blocks are advised as transparent huge pages (2 MiB faults), which makes the step faster at
the same peak RSS (BENCHMARKS.md, "Where the time goes"). A glibc tunable is read only when a process starts, so the command-line
programs re-execute themselves once with it set, when jax will run on the CPU. Setting
GLIBC_TUNABLES yourself (e.g. `glibc.malloc.hugetlb=0`) turns this off.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


# Distributions that give jax a GPU or TPU backend, which it then prefers to the CPU.
_ACCELERATOR_PLUGINS = re.compile(r"jax[-_]cuda\d*[-_]plugin|jax[-_]rocm\d*[-_]plugin|libtpu")


def backend_is_cpu(environ: Mapping[str, str], distributions: Iterable[str]) -> bool:
  """Whether jax will compute on the CPU, decided without importing it (so before
  anything is allocated): JAX_PLATFORMS names the backend first in line; otherwise an
  installed GPU or TPU plugin means an accelerator. (With a plugin but no device, jax
  falls back to the CPU and this says False: the run only misses the speed-up.)"""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(_ACCELERATOR_PLUGINS.fullmatch(d.lower()) for d in distributions)


def environment_with_huge_pages(
  environ: Mapping[str, str], thp_mode: str, libc: str, cpu_backend: bool = True
) -> dict[str, str] | None:
  """The environment to re-execute with, or None when it would change nothing.

  Only when jax computes on the CPU (on a GPU/TPU the step's buffers are not malloc'ed),
  the kernel gives huge pages on request (THP mode `[madvise]`; `[always]` needs nothing,
  `[never]` gives nothing), the C library is glibc, and the user has not chosen a
  `glibc.malloc.hugetlb` value.
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (
    not cpu_backend
    or libc != "glibc"
    or "[madvise]" not in thp_mode
    or "glibc.malloc.hugetlb" in tunables
  ):
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, TUNABLE]))}


def reexec_with_huge_pages() -> None:
  """Re-executes this program with huge pages for malloc, if that would change anything.

  Call first thing in a command-line program, before it allocates anything big.
  """
  if sys.platform != "linux":
    return
  try:
    with open(_THP_MODE) as f:
      thp_mode = f.read()
  except OSError:
    return
  installed = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
  env = environment_with_huge_pages(
    os.environ, thp_mode, platform.libc_ver()[0], backend_is_cpu(os.environ, installed)
  )
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
