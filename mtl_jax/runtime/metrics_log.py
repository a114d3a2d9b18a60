"""Where metrics go: WORKDIR/metrics.jsonl (one JSON object a line), TensorBoard events,
and a progress bar. Arrays with a task axis are spread into per-task scalars.

Each step's record is in metrics.jsonl once, across resumes: a resumed run first drops the
records of steps after the checkpoint it resumes from (they are trained again), and a
record whose (step, kind) is already there is not written twice (the final evaluation of
a finished run that is rerun). Each record is written with one write() call on a file
opened O_APPEND, so a kill -9 cannot leave half a line; a line cut short otherwise (power
loss, full disk) is dropped at the next resume. The records of a step that is checkpointed
are also stored in its checkpoint (`records_at`, the trainer's `Checkpointer.step_records`),
and a run resumed from that step writes again those the file lost (`resume_records`): so
the resumed step's own record, the last one written before its save, survives a cut too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

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


def _kind(record: dict) -> str:
  """'dev/' for an evaluation's record (every key but step under dev/), else 'train'."""
  keys = [k for k in record if k != "step"]
  return "dev/" if keys and all(k.startswith("dev/") for k in keys) else "train"


def truncate_after(path: str, step: int) -> set[tuple[int, str]]:
  """Rewrites `path` (atomically) without records of steps after `step` and without lines
  that do not parse; returns the (step, kind) of the records kept."""
  if not os.path.isfile(path):
    return set()
  kept, lines, dropped = set(), [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        record = json.loads(line)
        keep = isinstance(record, dict) and int(record["step"]) <= step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.add((int(record["step"]), _kind(record)))
        lines.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(lines)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return kept


class MetricsLog:
  """With write=False (the other processes of a multi-host run) nothing is written.

  `resume_step`: the step the run starts from (0 for a fresh one); records after it,
  from an earlier attempt that got further than its last checkpoint, are dropped.
  `resume_records`: the records of `resume_step` stored in its checkpoint; those the file
  no longer holds (a cut last line) are written again."""

  def __init__(
    self,
    workdir: str,
    write: bool = True,
    resume_step: int = 0,
    resume_records: Sequence[dict] = (),
  ):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._written = truncate_after(self.path, resume_step) if write else set()
    self._file = (
      os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if write else None
    )
    self._latest: tuple[int, list[dict]] = (resume_step, [])  # The last step's records.
    for record in resume_records:
      if isinstance(record, dict) and int(record.get("step", -1)) == resume_step:
        self._append(record)
    self._tb = None
    if write:
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # Optional: metrics.jsonl has everything.
        pass

  def write(
    self,
    step: int,
    metrics: dict,
    tasks: Sequence[str] = (),
    prefix: str = "",
    extra: dict | None = None,
  ) -> dict:
    flat = {prefix + k: v for k, v in _flatten(metrics, tasks).items()}
    flat.update(extra or {})
    self._append({"step": step, **flat})
    if self._tb is not None:
      for k, v in flat.items():
        if isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
    return flat

  def _append(self, record: dict) -> None:
    """Writes `record` unless the file holds its (step, kind); remembers it for records_at."""
    step = int(record["step"])
    if self._latest[0] != step:
      self._latest = (step, [])
    self._latest[1].append(record)
    key = (step, _kind(record))
    if self._file is not None and key not in self._written:
      self._written.add(key)
      data = (json.dumps(record) + "\n").encode()
      while data:  # One call in practice; a short write only on a full disk.
        data = data[os.write(self._file, data) :]

  def records_at(self, step: int) -> list[dict]:
    """The records logged at `step` (if it is the latest step logged), for its checkpoint."""
    return list(self._latest[1]) if self._latest[0] == step else []

  def progress(self, first: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(
      total=total,
      initial=first,
      desc="train",
      unit="step",
      file=sys.stderr,
      dynamic_ncols=True,
      mininterval=1.0,
      disable=self._file is None,
    )

  @staticmethod
  def table(results: dict) -> str:
    rows = [("metric", "dev")] + [(k, f"{v:.4f}") for k, v in sorted(results.items())]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)

  def close(self) -> None:
    if self._file is not None:
      os.close(self._file)
      self._file = None
    if self._tb is not None:
      self._tb.close()
