"""Reading a task's data files (the CS224N minBERT ones: SST-5, Quora, STS-B; or a task
declared in the config, `mtl_jax.tasks`: the same format, its own columns).

The files are tab-separated with an unnamed index first column; columns are
looked up by name from the header, so the odd `0<TAB><TAB>id<TAB>sentence`
header of the *-test-student.csv files works. Parsing matches the starter
code (`csv.DictReader(fp, delimiter='\\t')`, default quoting), so the same
rows are read.

Policy for bad input, chosen so that dirty rows never crash a run silently or
sneak into training:
  * Broken rows (wrong number of fields, e.g. from broken quoting; an empty
    id/sentence/label; an unparsable label) are skipped, recorded in
    `TaskSplit.skipped` with their 1-based line number in the file, and
    summarised in one logged line. With `strict=True` the first one raises.
  * A label that parses but is out of range (sst not in 0..4, quora not 0/1,
    sts not in [0, 5]: the task's declaration, `mtl_jax.tasks`) is a DataError even
    when not strict: it means the file is not what we think it is, not that
    one row is dirty. (The real files have none.)
  * Missing file, missing column, empty file, unknown task/split: DataError.
  * A dev split on which its task's metric is undefined (Pearson's correlation of fewer
    than 2 rows or of equal labels; no row at all): DataError, naming the file, since a
    metric reported as 0 would make every dev comparison meaningless.
  * Duplicate ids are kept (as the starter does) but logged as a warning,
    since predictions are keyed by id.
  * A quote left open takes the lines up to the next quote into one field
    (the starter's reader does the same). Such a record is skipped as
    malformed when its field count is wrong or a field holds a tab (the
    rows it took in): the log names the lines it covers, so rows are never
    merged into a sentence or dropped silently. A quoted sentence that spans
    lines without a tab is read, as by the starter. (The real files have no
    record spanning lines.)
  * Fully blank lines are ignored, as csv.DictReader does.
  * A UTF-8 byte order mark at the start of a file is ignored.
Sentences are stripped (SST ones start with a space) but not lowercased: the
tokenizer is uncased and does that itself.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import re

import numpy as np
from absl import logging

from mtl_jax import tasks

# (task, split) -> file name of the CS224N tasks.
FILES = {(t.name, split): name for t in tasks.DEFAULT for split, name in t.files.items()}


class DataError(ValueError):
  """A data file is missing or unusable; the message names the file (and line)."""


class _Skip(Exception):
  """A malformed row: skipped, or fatal when strict."""


@dataclasses.dataclass(frozen=True)
class TaskSplit:
  task: str
  split: str
  path: str
  ids: list[str]
  sentences1: list[str]
  sentences2: list[str] | None  # None for sst
  labels: np.ndarray | None  # None for test files
  skipped: list[tuple[int, str]]  # (1-based line in the file, reason)
  spec: tasks.TaskSpec | None = None  # Its task (None: the CS224N task called `task`).

  @property
  def task_spec(self) -> tasks.TaskSpec:
    return self.spec if self.spec is not None else tasks.get(self.task)

  def __len__(self) -> int:
    return len(self.ids)


def default_data_dir() -> str:
  """`data/` in the working directory if present, else `<repo>/../shared/data` when this
  package runs from a checkout (one pip installed has none: then `data/`, which the data
  loader names as missing)."""
  local = os.path.abspath("data")
  if os.path.isdir(local):
    return local
  repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if not os.path.isfile(os.path.join(repo_root, "pyproject.toml")):
    return local
  return os.path.abspath(os.path.join(repo_root, "..", "shared", "data"))


def _parse_label(spec: tasks.TaskSpec, text: str, where: str) -> float | int:
  """Unparsable → _Skip (a dirty row); parsable but out of range → DataError (naming the
  task's label key, since a declared task's kind may be the thing that is wrong)."""
  try:
    value = float(text)
  except ValueError:
    raise _Skip(f"unparsable {spec.label_column} {text!r}") from None
  if spec.label == "class":
    top = spec.num_classes - 1
    ok = math.isfinite(value) and value.is_integer() and 0 <= value <= top
    expected = f"an integer class in 0..{top}"
  elif spec.label == "binary":
    ok = value in (0.0, 1.0)
    expected = "0 or 1"
  else:
    ok = 0.0 <= value <= spec.max_score  # False for NaN
    expected = f"in [0, {spec.max_score:g}]"
  if not ok:
    raise DataError(
      f"{where}: {spec.label_column} {text!r} out of range (expected {expected}: "
      f"config.tasks.{spec.name}.label={spec.label!r})"
    )
  return int(value) if spec.label == "class" else value


def _label_dtype(spec: tasks.TaskSpec) -> type:
  return np.int32 if spec.label == "class" else np.float32


def _spec(task: str | tasks.TaskSpec) -> tasks.TaskSpec:
  """A TaskSpec, or the CS224N task of that name."""
  return task if isinstance(task, tasks.TaskSpec) else tasks.get(task)


def load_split(
  data_dir: str,
  task: str | tasks.TaskSpec,
  split: str,
  strict: bool = False,
  limit: int | None = None,
) -> TaskSplit:
  """Reads one task/split file (`task`: its spec, or a CS224N task's name); see the module
  docstring for the error policy."""
  try:
    spec = _spec(task)
  except ValueError:
    spec = None
  if spec is None:
    valid = ", ".join(f"{t}/{s}" for t, s in FILES)
    raise DataError(f"unknown task/split {task!r}/{split!r}; valid: {valid}")
  if split not in spec.files:
    raise DataError(
      f"task {spec.name} has no {split} file (config.tasks.{spec.name}.files: {spec.files})"
    )
  name = spec.files[split]
  path = os.path.abspath(os.path.join(data_dir, name))
  if not os.path.isfile(path):
    raise DataError(
      f"{path}: data file not found (config.tasks.{spec.name}.files.{split}); point "
      f"--config.data_dir at the directory holding the task files (now {data_dir!r})"
    )
  data = read_task_file(path, spec, split, split != "test", strict, limit)
  if split == "dev":
    check_dev_metric(data, limit)
  return data


def check_dev_metric(data: TaskSplit, limit: int | None = None) -> None:
  """Refuses a dev split on which its task's metric is undefined (`undefined_metric`).
  Scored as 0 it would enter the overall score, its bootstrap interval and the
  best-checkpoint choice as if it were a measurement. (An empty dev split is refused by
  `read_task_file`: no accuracy of no rows either.)"""
  why = undefined_metric(data, limit)
  if why is None:
    return
  spec = data.task_spec
  raise DataError(
    f"{data.path}: the {data.task} dev set {why}: its metric, the Pearson correlation, is "
    "undefined there, and every dev comparison (overall, the best checkpoint, the bootstrap) "
    "would be meaningless; use a dev file with at least 2 rows of different "
    f"{spec.label_column}"
  )


def undefined_metric(data: TaskSplit, limit: int | None = None) -> str | None:
  """Why the task's metric is undefined on these labelled rows ('has 1 usable row', 'has 3
  rows whose similarity are all 2.5'), or None: Pearson's correlation needs 2 rows of
  different labels (accuracy needs one row, which `read_task_file` guarantees)."""
  spec = data.task_spec
  if spec.metric != "pearson" or data.labels is None:
    return None
  n = len(data)
  if n >= 2 and not np.all(data.labels == data.labels[0]):
    return None
  read = f" (the first {limit}: config.data_limit)" if limit is not None and n >= limit else ""
  if n < 2:
    return f"has {n} usable row{'s' if n != 1 else ''}{read}"
  return f"has {n} rows{read} whose {spec.label_column} are all {float(data.labels[0]):g}"


def read_task_file(
  path: str,
  task: str | tasks.TaskSpec,
  split: str,
  has_labels: bool | None,
  strict: bool = False,
  limit: int | None = None,
) -> TaskSplit:
  """Reads a file in a task's CS224N format (`task`: its spec, or a CS224N task's name);
  `has_labels=None`: if the column is there."""
  name = os.path.basename(path)
  spec = _spec(task)
  columns, label_column = spec.sentence_columns, spec.label_column
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  if has_labels is None:
    has_labels = label_column in read_header(path)
  wanted = ["id", *columns] + ([label_column] if has_labels else [])

  ids: list[str] = []
  sents: list[list[str]] = [[] for _ in columns]
  labels: list[float | int] = []
  skipped: list[tuple[int, str]] = []
  try:
    with open(path, encoding="utf-8-sig", newline="") as fp:
      reader = csv.reader(fp, delimiter="\t")
      header = next(reader, None)
      if header is None:
        raise DataError(f"{path}: empty file (no header line)")
      header = [h.strip() for h in header]
      missing = [c for c in wanted if c not in header]
      if missing:
        keys = [
          "sentence_columns" if c in columns else "label_column" for c in missing if c != "id"
        ]
        declared = f" (config.tasks.{spec.name}.{keys[0]})" if keys else ""
        raise DataError(f"{path}: missing column(s) {missing}{declared}; found columns {header}")
      col = {c: header.index(c) for c in wanted}
      end = reader.line_num
      for row in reader:
        line, end = end + 1, reader.line_num  # a quoted field may span lines
        if not row:
          continue  # blank line; csv.DictReader skips these too
        where = f"{path}:{line}"
        try:
          span = f" (record spans lines {line}-{end})" if end > line else ""
          if len(row) != len(header):
            raise _Skip(f"{len(row)} fields, expected {len(header)}{span}")
          if any("\t" in field for field in row):
            raise _Skip(f"a quoted field holds a tab: an unclosed quote took in later rows{span}")
          values = {c: row[i].strip() for c, i in col.items()}
          empty = [c for c in wanted if not values[c]]
          if empty:
            raise _Skip(f"empty {', '.join(empty)}")
          label = _parse_label(spec, values[wanted[-1]], where) if has_labels else None
        except _Skip as e:
          if strict:
            raise DataError(f"{where}: malformed row: {e} (strict mode)") from None
          skipped.append((line, str(e)))
          continue
        ids.append(values["id"])
        for lst, c in zip(sents, columns):
          lst.append(values[c])
        if has_labels:
          labels.append(label)
        if limit is not None and len(ids) >= limit:
          break
  except csv.Error as e:
    raise DataError(f"{path}:{reader.line_num}: unreadable CSV: {e}") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not valid UTF-8: {e}") from None

  if not ids and not (limit is not None and limit <= 0):
    raise DataError(_no_usable_rows(path, skipped))
  _log_problems(name, ids, skipped)
  return TaskSplit(
    task=spec.name,
    split=split,
    path=path,
    ids=ids,
    sentences1=sents[0],
    sentences2=sents[1] if len(sents) > 1 else None,
    labels=np.asarray(labels, dtype=_label_dtype(spec)) if has_labels else None,
    skipped=skipped,
    spec=spec,
  )


def _no_usable_rows(path: str, skipped: list[tuple[int, str]]) -> str:
  """Why a file gave no row: none after the header, or every row malformed (the first one's
  line and problem, and the other problems seen)."""
  if not skipped:
    return f"{path}: no usable rows: the file has no rows after its header line"
  line, reason = skipped[0]
  others = sorted({_SPAN.sub("", r) for _, r in skipped[1:]} - {_SPAN.sub("", reason)})
  also = f"; other problems: {'; '.join(others[:3])}" + ("; ..." if len(others) > 3 else "")
  return (
    f"{path}: no usable rows: all {len(skipped)} rows are malformed, the first at line "
    f"{line}: {reason}{also if others else ''}; fix the file (tab-separated, with the "
    "columns of its header)"
  )


def read_header(path: str) -> list[str]:
  """The stripped column names of a tab-separated file's first line ([] if empty)."""
  try:
    with open(path, encoding="utf-8-sig", newline="") as fp:
      return [h.strip() for h in next(csv.reader(fp, delimiter="\t"), [])]
  except (csv.Error, UnicodeDecodeError) as e:
    raise DataError(f"{path}: unreadable: {e}") from None


_SPAN = re.compile(r" \(record spans lines (\d+)-(\d+)\)")


def _span(line: int, reason: str) -> tuple[int, int]:
  """The first and last line of a skipped record."""
  span = _SPAN.search(reason)
  return (int(span.group(1)), int(span.group(2))) if span else (line, line)


def _log_problems(name: str, ids: list[str], skipped: list[tuple[int, str]]) -> None:
  if skipped:
    spans = [_span(n, r) for n, r in skipped]
    shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans[:10])
    shown += ", ..." if len(spans) > 10 else ""
    covered = sum(b - a + 1 for a, b in spans)
    if covered > len(spans):  # Some records spanned lines: say how many lines went.
      shown += f"; {covered} lines in all"
    reasons = "; ".join(sorted({_SPAN.sub("", r) for _, r in skipped}))
    logging.warning(
      "%s: skipped %d malformed rows (lines %s): %s", name, len(skipped), shown, reasons
    )
  dups = [k for k, v in collections.Counter(ids).items() if v > 1]
  if dups:
    logging.warning("%s: %d duplicate ids kept (e.g. %s)", name, len(dups), dups[:3])
