"""Orbax checkpoints of the train state, atomic and resumable, plus the best dev step.

Orbax writes each step into `<step>.orbax-checkpoint-tmp-<timestamp>/` and renames it to
`<step>/` when complete, so a run killed mid-save never resumes from a half-written
checkpoint: `latest_step` only sees finished ones, and the leftover temporary directory is
deleted when the next training run opens its manager (`cleanup_tmp=True`; readers such as
export never delete, so they cannot remove a live run's save in progress). The data pipeline's position is the step
number itself (see `mtl_jax.data.batching`), and randomness is folded from (seed, step), so
params, optimizer state and step are all that resume needs.

Guarantees on top of orbax's (docs/reliability.md):
- a non-finite state is never saved: `Checkpointer.save` checks params and optimizer state
  with one jitted all-finite reduction before every save it is about to make (not only at
  the trainer's log steps), and refuses with `NonFiniteStateError`, so the rotation keeps
  the last finite steps instead of rotating them out for NaNs;
- a checkpoint that does not restore (a truncated or damaged file) is not the end of the
  run: `restore` falls back to the newest step that restores, and the trainer
  (`set_aside=True`) moves the unreadable steps to `checkpoints_corrupt/` (never deleted,
  and out of orbax's sight, so it neither resumes from nor rotates them);
- each saved step records a CRC-32 of each of its files in `<step>/CHECKSUMS.json`, written
  into orbax's temporary directory after every item is complete and before orbax renames
  it into place (`post_finalization_callback`), so a step has its checksums exactly when it
  exists. Restore checks them first: a file changed after the save (a flipped byte, which
  may still decode) makes the step unreadable like a truncated file. Steps saved before
  checksums existed have no CHECKSUMS.json and restore unchecked.

Workdir layout: `checkpoints/` (the latest `train.keep_checkpoints` steps; resume reads the
latest restorable one), `checkpoints_corrupt/<step>[-n]/` (steps set aside), and, when dev is evaluated during training, `best_checkpoint/<step>/` (a separate
manager keeping one step: the best dev overall so far, never pruned by the latest-k
rotation) described by `best.json` ({"step", "overall", "metrics"}, replaced atomically).
"""

from __future__ import annotations

import glob
import json
import logging as std_logging
import os
import re
import shutil
import sys
import traceback
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from mtl_jax.runtime import workdir_lock


class NonFiniteStateError(FloatingPointError):
  """A state about to be saved holds NaN or inf: it is not saved."""


class UnreadableCheckpointError(ValueError):
  """No checkpoint of a workdir restores; the message names the steps and what to do."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, read-only file system, ...): one line
  naming the step, the directory and what to do. The step is not saved (orbax renames a
  step into place only when complete); the earlier ones are intact."""


class ChecksumError(ValueError):
  """A file of a saved step differs from the checksum recorded when it was saved."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree_util.tree_leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def all_finite(tree: Any) -> bool:
  """Whether every float leaf of `tree` is finite: one jitted reduction, one scalar to host."""
  return bool(_all_finite(_keys_to_data(tree)))


def _keys_to_data(tree: Any) -> Any:
  """Typed PRNG keys (e.g. in a method's optax state) are stored as their raw uint32 data."""
  return jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree: Any, like: Any) -> Any:
  return jax.tree_util.tree_map(
    lambda x, ref: (
      jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x
    ),
    tree,
    like,
  )


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


CHECKPOINTS = "checkpoints"
CORRUPT = "checkpoints_corrupt"  # Steps that did not restore, set aside (never deleted).
BEST_CHECKPOINT = "best_checkpoint"
BEST_JSON = "best.json"
CHECKSUMS = "CHECKSUMS.json"  # {relative path: CRC-32} of a step's files, in the step.
# Written by orbax after the checksums (when it commits the step): not covered.
_UNCHECKED = {CHECKSUMS, "_CHECKPOINT_METADATA", "commit_success.txt"}
_ORBAX_TMP = ".orbax-checkpoint-tmp"


def _crc32(path: str) -> str:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return f"{crc:08x}"


def _step_files(step_dir: str) -> list[str]:
  """The files of a step that its checksums cover, relative to it, sorted."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel not in _UNCHECKED:
        out.append(rel)
  return sorted(out)


def write_checksums(step_dir: str) -> None:
  """Records the CRC-32 of each file of `step_dir` in its CHECKSUMS.json (atomically)."""
  sums = {rel: _crc32(os.path.join(step_dir, rel)) for rel in _step_files(step_dir)}
  write_json_atomic(os.path.join(step_dir, CHECKSUMS), {"crc32": sums})


def verify_checksums(step_dir: str) -> bool:
  """Raises ChecksumError naming the first file of `step_dir` that is missing or differs
  from its CHECKSUMS.json; returns False when the step has none (saved before them)."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.isfile(path):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      sums = json.load(f)["crc32"]
  except (ValueError, KeyError, TypeError) as e:
    raise ChecksumError(f"{path} is damaged ({_one_line(e)})") from None
  for rel, expected in sorted(sums.items()):
    file = os.path.join(step_dir, rel)
    if not os.path.isfile(file):
      raise ChecksumError(f"{file} is missing (it was saved with the step)")
    if _crc32(file) != expected:
      raise ChecksumError(f"{file} differs from the checksum recorded when it was saved")
  return True


class Checkpointer:
  """Saves every `every` steps (and on request), keeps the last `keep`, in workdir/subdir.
  Only the process that trains in the workdir should pass cleanup_tmp=True."""

  def __init__(
    self, workdir: str, every: int, keep: int, subdir: str = CHECKPOINTS, cleanup_tmp: bool = False
  ):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    _quiet_orbax_leftovers()
    self._saving: int | None = None  # The step of the save in progress.
    # step -> its metrics.jsonl records (MetricsLog.records_at), kept in the step's meta
    # as "records" so that a resumed run can write them again if the file lost them.
    self.step_records: Callable[[int], list[dict]] | None = None
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1),
        max_to_keep=max(keep, 1),
        create=cleanup_tmp,  # A reader does not create an empty checkpoints/ directory.
        cleanup_tmp_directories=cleanup_tmp,  # Leftovers of a save killed midway.
        async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums),
      ),
    )

  def _write_checksums(self) -> None:
    """Orbax's post-finalization callback (on the primary process, once every process has
    written its part): the step's files are complete in its temporary directory, which
    orbax renames into place next."""
    pattern = os.path.join(self.directory, f"{self._saving}{_ORBAX_TMP}*")
    candidates = sorted(glob.glob(pattern), key=os.path.getmtime)
    if candidates:
      write_checksums(candidates[-1])

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Saves when `force` or the interval says so; raises NonFiniteStateError instead of
    saving a state with NaN or inf (checked only on the steps that are saved)."""
    if not (force or self.manager.should_save(step)):
      return False
    if not all_finite(state):
      last = self.latest_step()
      kept = (
        "no step was saved before it"
        if last is None
        else f"the last saved step, {last}, is finite: {self.directory}"
      )
      raise NonFiniteStateError(
        f"non-finite parameters or optimizer state at step {step}: not saved ({kept}); "
        "lower train.learning_rate or set train.grad_clip?"
      )
    if self.step_records is not None:
      meta = {**meta, "records": self.step_records(step)}
    self._wait()  # The previous (asynchronous) save: its failure is named as its step's.
    self._saving = step
    try:
      return self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(_keys_to_data(state)), meta=ocp.args.JsonSave(meta)
        ),
        force=force,
      )
    except Exception as e:
      error = _write_error(e, step, self.directory)
      if error is None:
        raise
      raise error from e

  def _wait(self) -> None:
    """Waits for the save in progress; a failed write raises CheckpointWriteError."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      error = _write_error(e, self._saving, self.directory)
      if error is None:
        raise
      raise error from e

  def _restore_step(self, like: Any, step: int) -> tuple[Any, dict]:
    verify_checksums(os.path.join(self.directory, str(step)))
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _keys_to_data(like))
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return _data_to_keys(out["state"], like), out["meta"]

  def restore(
    self, like: Any, step: int | None = None, set_aside: bool = False
  ) -> tuple[Any, dict]:
    """Restores (state, meta) at `step`, or by default at the newest step that restores;
    `like` gives structure and shapes.

    A newer step that fails to restore (a truncated or damaged file, or one that differs
    from its checksum) is skipped, and with `set_aside` (only the trainer that holds the
    workdir's lock) moved to checkpoints_corrupt/, once an older step has restored: one
    warning per skipped step, naming it and why. When no step restores, as with a state
    of another shape, nothing is moved and UnreadableCheckpointError names every step and
    the first error."""
    if step is not None:
      return self._restore_step(like, step)
    failed = []
    for candidate in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(like, candidate)
      except Exception as e:  # Whatever orbax, tensorstore or JSON raise on a bad file.
        failed.append((candidate, e))
        continue
      if failed:
        self._skipped(failed, candidate, set_aside)
      return restored
    if not failed:
      raise UnreadableCheckpointError(f"no checkpoint in {self.directory}")
    steps = ", ".join(str(s) for s, _ in failed)
    raise UnreadableCheckpointError(
      f"no checkpoint in {self.directory} restores (steps {steps}; step {failed[0][0]}: "
      f"{_one_line(failed[0][1])}). If the config changed, use the one the run was trained "
      "with; if the files are damaged, move the workdir's checkpoints/ aside to start over"
    )

  def _skipped(self, failed: list, restored: int, set_aside: bool) -> None:
    """Warns once per step of `failed` skipped for `restored`; moves them aside if asked."""
    for step, error in failed:
      if not set_aside:
        logging.warning(
          "using step %d of %s: newer step %d does not restore (%s)",
          restored,
          self.directory,
          step,
          _one_line(error),
        )
        continue
      where = _set_aside(
        os.path.join(self.directory, str(step)),
        os.path.join(os.path.dirname(self.directory), CORRUPT),
      )
      logging.warning(
        "checkpoint step %d does not restore: moved it to %s (not deleted); resuming from "
        "step %d (%s)",
        step,
        where,
        restored,
        _one_line(error),
      )
    if set_aside:
      self.manager.reload()  # It must neither list nor rotate the moved steps.

  def close(self) -> None:
    try:
      self._wait()
    finally:
      self.manager.close()


def _write_error(e: BaseException, step: int | None, directory: str) -> Exception | None:
  """CheckpointWriteError for a save of `step` the disk refused, else None (re-raise e)."""
  code = workdir_lock.disk_errno(e)
  if code is None:
    return None
  what = f"checkpoint step {step} to {directory}" if step is not None else directory
  error = CheckpointWriteError(workdir_lock.disk_error_message(code, what))
  error.errno = code
  return error


def _quiet_orbax_leftovers() -> None:
  """When a restore or a save fails, orbax's other reads or writes still finish and fail
  alike, and Python reports them late, each with a traceback that buries the one-line
  message: as "Exception ignored ... Event loop is closed" (they report to the asyncio
  loop orbax has closed); as "Exception ignored in: <coroutine ...>" (orbax's coroutines
  of a failed save, never finished, closed by the garbage collector or at exit); or, when
  the garbage collector frees their futures, as asyncio's "Future exception was never
  retrieved". Only those are dropped: the RuntimeError "Event loop is closed", orbax's
  own coroutines, and never-retrieved exceptions raised inside orbax (or epath, which
  orbax writes through); everything else is reported as before. The error itself reaches
  the caller (Checkpointer.restore's fallback, CheckpointWriteError)."""
  previous = sys.unraisablehook
  if getattr(previous, "_mtl_jax_quiet", False):
    return

  def hook(unraisable) -> None:
    if not (_closed_loop(unraisable.exc_value) or _orbax_coroutine(unraisable.object)):
      previous(unraisable)

  hook._mtl_jax_quiet = True
  sys.unraisablehook = hook
  std_logging.getLogger("asyncio").addFilter(_unretrieved_orbax_read)


# Kept for callers of the previous name (tests).
_ignore_reads_of_an_aborted_restore = _quiet_orbax_leftovers


def _closed_loop(error: BaseException | None) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _orbax_coroutine(obj: Any) -> bool:
  code = getattr(obj, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _unretrieved_orbax_read(record: std_logging.LogRecord) -> bool:
  """False (drop) for asyncio's report of a never-retrieved exception raised in orbax."""
  error = record.exc_info[1] if record.exc_info else None
  if error is None or "exception was never retrieved" not in record.getMessage():
    return True
  frames = traceback.extract_tb(error.__traceback__)
  return not any(
    f"{os.sep}{lib}{os.sep}" in frame.filename for frame in frames for lib in ("orbax", "etils")
  )


def _one_line(e: BaseException) -> str:
  """`Type: message` on one line, without tensorstore's JSON specs and object reprs."""
  text = " ".join(str(e).split())
  text = re.split(r"\s*(?:\[tensorstore_spec|See full TensorStore details)", text)[0]
  text = re.sub(r'Error opening "\w+" driver: ', "", text)
  return f"{type(e).__name__}: {text[:300]}"


def _set_aside(path: str, corrupt_dir: str) -> str:
  """Moves `path` into `corrupt_dir` as <name>, or <name>-<n> when that exists; returns it."""
  os.makedirs(corrupt_dir, exist_ok=True)
  name = os.path.basename(path)
  target, n = os.path.join(corrupt_dir, name), 1
  while os.path.exists(target):
    target, n = os.path.join(corrupt_dir, f"{name}-{n}"), n + 1
  shutil.move(path, target)
  return target


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to `path` via a temporary file and a rename: readers never see half of it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_best(workdir: str) -> dict | None:
  """The workdir's best.json ({"step", "overall", "metrics"}), or None before any evaluation."""
  path = os.path.join(workdir, BEST_JSON)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      best = json.load(f)
    problem = None if isinstance(best, dict) and "step" in best else "no step recorded"
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    problem = str(e)
  if problem:
    raise UnreadableCheckpointError(
      f"{path}: damaged ({problem}); it says which checkpoint in {BEST_CHECKPOINT}/ is the "
      f"best on dev: restore it, or delete it and {BEST_CHECKPOINT}/ to start that record "
      "afresh"
    )
  return best


def save_best(workdir: str, step: int, state: Any, metrics: dict) -> dict:
  """Saves `state` as the best checkpoint (replacing the previous best) and, once it is
  complete on disk, records it in best.json. Returns the record."""
  best = Checkpointer(workdir, 1, 1, subdir=BEST_CHECKPOINT, cleanup_tmp=True)
  for later in [s for s in best.manager.all_steps() if s > step]:
    best.manager.delete(later)  # Saved by a run killed before best.json recorded it.
  if best.latest_step() != step:
    best.save(step, state, {"step": step}, force=True)
  best.close()  # Waits for the save (and the old best's deletion) before best.json.
  record = {
    "step": int(step),
    "overall": float(metrics["overall"]),
    "metrics": {k: float(v) for k, v in metrics.items()},
    "checkpoint": os.path.join(BEST_CHECKPOINT, str(int(step))),
  }
  write_json_atomic(os.path.join(workdir, BEST_JSON), record)
  return record
