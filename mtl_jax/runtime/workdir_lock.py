"""One training process per workdir: an advisory lock in WORKDIR/train.lock.

Two trainers on one workdir would both write checkpoints, config.json and metrics.jsonl,
and orbax would see the other's half-written steps: the first to notice crashes, the other
may wait for a save that never finishes. So `hold(workdir)` takes an exclusive
`fcntl.flock` on WORKDIR/train.lock and writes the holder's PID, host and start time into
it; a second trainer is refused at once, with a message naming them.

Why flock rather than creating the file with O_EXCL: the kernel drops a flock when its
holder dies in any way (kill -9, OOM killer, power to the process lost), so a lock can
never outlive its process, no PID has to be probed for liveness (PIDs are reused, and only
probeable on the same host), and taking over after a dead holder has no race (two
newcomers cannot both decide the lock is stale and both take it). The lock file is never
deleted (deleting a flocked file lets a third process lock a fresh inode while a second
one holds the old); a holder empties it on a clean exit. A file still naming a PID while
nobody holds its flock was left by a process that died: it is taken over with a warning.
flock works on local file systems and on NFS v4 (Linux maps it to NFS locks); on a file
system without locking, the lock can only warn about a left-over holder.

Readers of a workdir (diagnose, export, embed --workdir) take no lock: they never write
the checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from absl import logging

LOCK_FILE = "train.lock"


class WorkdirError(ValueError):
  """A workdir that cannot be used (not creatable, not writable, or held by another run)."""


# errno -> what a one-line error says of a write the disk refused, and what to do.
_DISK_ERRORS = {
  errno.ENOSPC: ("no space left on device", "free space and rerun the same command to resume"),
  errno.EDQUOT: ("disk quota exceeded", "free space and rerun the same command to resume"),
  errno.EROFS: (
    "read-only file system",
    "use a --workdir on a writable file system (or remount it read-write) and rerun",
  ),
}


def disk_errno(e: BaseException | None) -> int | None:
  """ENOSPC, EDQUOT or EROFS when `e` (or what it was raised from) says the disk refused a
  write: an OSError, or tensorstore's ValueError (RESOURCE_EXHAUSTED, "No space left on
  device") as orbax raises it; else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
      return e.errno
    text = str(e)
    if "No space left on device" in text or ("RESOURCE_EXHAUSTED" in text and "writing" in text):
      return errno.ENOSPC
    if "Read-only file system" in text:
      return errno.EROFS
    if "Disk quota exceeded" in text:
      return errno.EDQUOT
    e = e.__cause__ or e.__context__
  return None


def disk_error_message(code: int, what: str) -> str:
  """'<reason> writing <what>: <what to do>' for a disk_errno code."""
  reason, todo = _DISK_ERRORS[code]
  return f"{reason} writing {what}: {todo}"


def _read_only(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def prepare(workdir: str) -> None:
  """Creates `workdir` (and its parents), or raises WorkdirError saying why it cannot."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
      f"cannot create --workdir={workdir}: {_reason(e)}; choose a directory you can write"
    ) from e
  if _read_only(workdir):
    raise WorkdirError(
      f"cannot write to --workdir={workdir}: read-only file system; choose a directory on a "
      "writable file system (or remount it read-write)"
    )
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(
      f"cannot write to --workdir={workdir} (permission denied); choose a directory you can write"
    )


def _reason(e: OSError) -> str:
  """strerror, plus the path component at fault (`afile/wd`: afile is a file)."""
  if e.errno in (errno.ENOTDIR, errno.EEXIST) and e.filename:
    path = os.path.abspath(e.filename)
    while path and not os.path.exists(path):
      path = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
      return f"{path} is a file, not a directory"
  return e.strerror or str(e)


def _holder() -> dict:
  return {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }


def _read_holder(fd: int) -> dict | None:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode("utf-8", "replace").strip()
  if not text:
    return None
  try:
    holder = json.loads(text)
    return holder if isinstance(holder, dict) else {"raw": text}
  except json.JSONDecodeError:
    return {"raw": text}


def _describe(holder: dict | None) -> str:
  if not holder:
    return "another process (it has not written its PID yet)"
  if "raw" in holder:
    return f"another process ({holder['raw'][:80]!r})"
  return f"PID {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since', '?')})"


def acquire(workdir: str) -> int:
  """Takes the workdir's lock; returns its file descriptor (pass it to `release`).

  Raises WorkdirError at once when another process holds it."""
  prepare(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(
      f"cannot create the lock file {path}: {_reason(e)}; choose a "
      "directory you can write as --workdir"
    ) from e
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _read_holder(fd)
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise WorkdirError(
        f"--workdir={workdir} is in use by {_describe(holder)}, which holds {path}: wait "
        "for it to finish (or stop it), or use another --workdir"
      ) from e
    raise WorkdirError(f"cannot lock {path}: {e.strerror}") from e
  left = _read_holder(fd)
  if left:  # Its flock is gone, so its process is too: it died without cleaning up.
    logging.warning(
      "taking over %s: it names %s, which no longer holds it (the process "
      "ended without releasing it)",
      path,
      _describe(left),
    )
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
    os.fsync(fd)
  except OSError as e:  # A full disk (or quota) refuses even these few bytes.
    release(fd)
    code = disk_errno(e)
    raise WorkdirError(
      disk_error_message(code, path) if code else f"cannot write {path}: {_reason(e)}"
    ) from e
  return fd


def release(fd: int) -> None:
  """Empties the lock file (a clean exit leaves no holder behind) and unlocks it."""
  try:
    os.ftruncate(fd, 0)
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def hold(workdir: str, lock: bool = True) -> Iterator[None]:
  """Holds the workdir's lock for the block. With lock=False (the non-primary processes of
  a multi-host run, which share the primary's workdir) the workdir is only prepared."""
  if not lock:
    prepare(workdir)
    yield
    return
  fd = acquire(workdir)
  try:
    yield
  finally:
    release(fd)
