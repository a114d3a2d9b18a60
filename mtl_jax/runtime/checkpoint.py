"""Orbax checkpoints of the train state, atomic and resumable, plus the best dev step.

Orbax writes each step into `<step>.orbax-checkpoint-tmp-<timestamp>/` and renames it to
`<step>/` when complete, so a run killed mid-save never resumes from a half-written
checkpoint: `latest_step` only sees finished ones, and the leftover temporary directory is
deleted when the next training run opens its manager (`cleanup_tmp=True`; readers such as
export never delete, so they cannot remove a live run's save in progress). The data pipeline's position is the step
number itself (see `mtl_jax.data.batching`), and randomness is folded from (seed, step), so
params, optimizer state and step are all that resume needs.

Two guarantees on top of orbax's (docs/reliability.md):
- a non-finite state is never saved: `Checkpointer.save` checks params and optimizer state
  with one jitted all-finite reduction before every save it is about to make (not only at
  the trainer's log steps), and refuses with `NonFiniteStateError`, so the rotation keeps
  the last finite steps instead of rotating them out for NaNs;
- a checkpoint that does not restore (a truncated or damaged file) is not the end of the
  run: `restore` falls back to the newest step that restores, and the trainer
  (`set_aside=True`) moves the unreadable steps to `checkpoints_corrupt/` (never deleted,
  and out of orbax's sight, so it neither resumes from nor rotates them).

Workdir layout: `checkpoints/` (the latest `train.keep_checkpoints` steps; resume reads the
latest restorable one), `checkpoints_corrupt/<step>[-n]/` (steps set aside), and, when dev is evaluated during training, `best_checkpoint/<step>/` (a separate
manager keeping one step: the best dev overall so far, never pruned by the latest-k
rotation) described by `best.json` ({"step", "overall", "metrics"}, replaced atomically).
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import shutil
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging


class NonFiniteStateError(FloatingPointError):
  """A state about to be saved holds NaN or inf: it is not saved."""


class UnreadableCheckpointError(ValueError):
  """No checkpoint of a workdir restores; the message names the steps and what to do."""


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


class Checkpointer:
  """Saves every `every` steps (and on request), keeps the last `keep`, in workdir/subdir.
  Only the process that trains in the workdir should pass cleanup_tmp=True."""

  def __init__(
    self, workdir: str, every: int, keep: int, subdir: str = CHECKPOINTS, cleanup_tmp: bool = False
  ):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1),
        max_to_keep=max(keep, 1),
        create=True,
        cleanup_tmp_directories=cleanup_tmp,
      ),
    )  # Leftovers of a save killed midway.

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
    return self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(state)), meta=ocp.args.JsonSave(meta)
      ),
      force=force,
    )

  def _restore_step(self, like: Any, step: int) -> tuple[Any, dict]:
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

    A newer step that fails to restore (a truncated or damaged file) is skipped with a
    warning naming it, and with `set_aside` (only the trainer that holds the workdir's
    lock) moved to checkpoints_corrupt/, once an older step has restored: when no step
    restores, as with a state of another shape, nothing is moved and
    UnreadableCheckpointError names every step and the first error."""
    if step is not None:
      return self._restore_step(like, step)
    _ignore_reads_of_an_aborted_restore()
    failed = []
    for candidate in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(like, candidate)
      except Exception as e:  # Whatever orbax, tensorstore or JSON raise on a bad file.
        failed.append((candidate, e))
        logging.warning(
          "checkpoint step %d in %s does not restore (%s); trying an older one",
          candidate,
          self.directory,
          _one_line(e),
        )
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
    """Warns that `failed` steps were skipped for `restored`; moves them aside if asked."""
    for step, _ in failed:
      if not set_aside:
        logging.warning(
          "using step %d of %s: newer step %d does not restore", restored, self.directory, step
        )
        continue
      where = _set_aside(
        os.path.join(self.directory, str(step)),
        os.path.join(os.path.dirname(self.directory), CORRUPT),
      )
      logging.warning(
        "checkpoint step %d does not restore: moved it to %s (not deleted); resuming from step %d",
        step,
        where,
        restored,
      )
    if set_aside:
      self.manager.reload()  # It must neither list nor rotate the moved steps.

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _ignore_reads_of_an_aborted_restore() -> None:
  """When a restore fails, the other reads it had started still finish and fail alike, and
  Python reports them late, each with a traceback that buries the one-line message: as
  "Exception ignored ... Event loop is closed" (they report to the asyncio loop orbax has
  closed) or, when the garbage collector frees their futures, as asyncio's "Future
  exception was never retrieved". Only those are dropped: the RuntimeError "Event loop is
  closed", and never-retrieved exceptions raised inside orbax; everything else is reported
  as before."""
  previous = sys.unraisablehook
  if getattr(previous, "_mtl_jax_quiet", False):
    return

  def hook(unraisable) -> None:
    if not (
      isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"
    ):
      previous(unraisable)

  hook._mtl_jax_quiet = True
  sys.unraisablehook = hook
  std_logging.getLogger("asyncio").addFilter(_unretrieved_orbax_read)


def _unretrieved_orbax_read(record: std_logging.LogRecord) -> bool:
  """False (drop) for asyncio's report of a never-retrieved exception raised in orbax."""
  error = record.exc_info[1] if record.exc_info else None
  if error is None or "exception was never retrieved" not in record.getMessage():
    return True
  frames = traceback.extract_tb(error.__traceback__)
  return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
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
