"""Transparent huge pages for XLA:CPU's buffers (Linux with glibc).

XLA:CPU allocates the step's temporary buffers with malloc, and glibc serves such large
blocks with fresh mmaps that are returned at the end of every step. Each step then
faults in (and the kernel zeroes) gigabytes in 4 KiB pages: a standalone 75 MB
elementwise op takes 18 ms into fresh memory and 1 ms into reused memory. With glibc's
`glibc.malloc.hugetlb=1` tunable those blocks are advised as transparent huge pages (2 MiB
faults), which made the bench step 20% (LoRA) and 11% (full) faster at the same peak RSS
(BENCHMARKS.md). A glibc tunable is read only when a process starts, so the command-line
programs re-execute themselves once with it set. Setting GLIBC_TUNABLES yourself (e.g.
`glibc.malloc.hugetlb=0`) turns this off.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def environment_with_huge_pages(environ: Mapping[str, str], thp_mode: str,
                                libc: str) -> dict[str, str] | None:
  """The environment to re-execute with, or None when it would change nothing.

  Only when the kernel gives huge pages on request (THP mode `[madvise]`; `[always]`
  needs nothing, `[never]` gives nothing), the C library is glibc, and the user has not
  chosen a `glibc.malloc.hugetlb` value.
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  if libc != "glibc" or "[madvise]" not in thp_mode or "glibc.malloc.hugetlb" in tunables:
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
  env = environment_with_huge_pages(os.environ, thp_mode, platform.libc_ver()[0])
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
