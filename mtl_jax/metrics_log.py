"""Where metrics go: WORKDIR/metrics.jsonl (one JSON object a line), TensorBoard events,
and a progress bar. Arrays with a task axis are spread into per-task scalars."""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np


def _flatten(metrics: dict, tasks: Sequence[str]) -> dict[str, float | list]:
  """Scalars stay scalars; [T] vectors become name/task; [T, T] matrices stay lists."""
  flat: dict = {}
  for name, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      flat[name] = value.item()
    elif value.ndim == 1 and len(value) == len(tasks):
      flat.update({f"{name}/{t}": v.item() for t, v in zip(tasks, value)})
    else:
      flat[name] = value.tolist()
  return flat


class MetricsLog:
  """With write=False (the other processes of a multi-host run) nothing is written."""

  def __init__(self, workdir: str, write: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a") if write else None
    self._tb = None
    if write:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # Optional: metrics.jsonl has everything.
        pass

  def write(self, step: int, metrics: dict, tasks: Sequence[str] = (), prefix: str = "",
            extra: dict | None = None) -> dict:
    flat = {prefix + k: v for k, v in _flatten(metrics, tasks).items()}
    flat.update(extra or {})
    if self._file is not None:
      self._file.write(json.dumps({"step": step, **flat}) + "\n")
      self._file.flush()
    if self._tb is not None:
      for k, v in flat.items():
        if isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
    return flat

  def progress(self, first: int, total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=first, desc="train", unit="step", file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0, disable=self._file is None)

  @staticmethod
  def table(results: dict) -> str:
    rows = [("metric", "dev")] + [(k, f"{v:.4f}") for k, v in sorted(results.items())]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
