"""The best dev checkpoint so far, and early stopping: one object, exact across resumes.

With train.eval_every > 0 each evaluation either improves on the best dev overall (the
state is saved in best_checkpoint/ and recorded in best.json) or does not; with
train.early_stopping_patience = P > 0, training stops after P evaluations in a row without
improvement. The count is derived from the step of the best evaluation, not counted, so a
resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from mtl_jax.runtime import checkpoint


class BestTracker:
  """Tracks the best dev overall of a run in `workdir` (state saved by checkpoint.save_best).

  Args:
    workdir: the run's directory (best.json and best_checkpoint/ live there).
    eval_every: steps between evaluations (0: no evaluation during training; tracks nothing).
    patience: evaluations without improvement before stopping (0: never stop early).
  """

  def __init__(self, workdir: str, eval_every: int, patience: int):
    self.workdir, self.eval_every, self.patience = workdir, eval_every, patience
    self.best = checkpoint.read_best(workdir) if eval_every else None

  def evals_without_improvement(self, step: int) -> int:
    """Evaluations in (best step, step]."""
    if not self.eval_every:
      return 0
    best_step = self.best["step"] if self.best else 0
    return step // self.eval_every - best_step // self.eval_every

  def should_stop(self, step: int) -> bool:
    """Training should not go past `step` (patience used up by the evaluations so far)."""
    return bool(self.patience) and self.evals_without_improvement(step) >= self.patience

  def update(self, step: int, state: Any, results: dict) -> str | None:
    """Records the evaluation of `step` (saving `state` if it is the best so far); returns
    why training should stop early, if it should."""
    if not self.eval_every:
      return None
    score = float(results["overall"])
    if np.isfinite(score) and (self.best is None or score > self.best["overall"]):
      self.best = checkpoint.save_best(self.workdir, step, state, results)
      logging.info("new best dev overall %.4f at step %d", score, step)
      return None
    if not self.should_stop(step):
      return None
    best, best_step = (self.best["overall"], self.best["step"]) if self.best else (np.nan, "-")
    return (
      f"early stopping at step {step}: dev overall has not improved on {best:.4f} "
      f"(step {best_step}) for {self.evals_without_improvement(step)} evaluations "
      f"(train.early_stopping_patience={self.patience})"
    )
