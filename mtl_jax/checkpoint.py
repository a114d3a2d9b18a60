"""Orbax checkpoints of the train state, atomic and resumable.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save never resumes from a half-written checkpoint: `latest_step` only sees
finished ones. The data pipeline's position is the step number itself (see
`mtl_jax.data.batching`), and randomness is folded from (seed, step), so params,
optimizer state and step are all that resume needs.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _keys_to_data(tree: Any) -> Any:
  """Typed PRNG keys (e.g. in a method's optax state) are stored as their raw uint32 data."""
  return jax.tree_util.tree_map(
      lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree: Any, like: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
      if _is_key(ref) else x, tree, like)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class Checkpointer:
  """Saves every `every` steps (and on request), keeps the last `keep`."""

  def __init__(self, workdir: str, every: int, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=max(keep, 1), create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)),
                                      meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) at `step` (default latest); `like` gives structure and shapes."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _keys_to_data(like))
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return _data_to_keys(out["state"], like), out["meta"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
