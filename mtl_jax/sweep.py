"""Several training runs, one report:

  python -m mtl_jax.sweep --configs configs/default.py configs/pcgrad.py --workdir runs/sweep \\
      [--set train.learning_rate=5e-4,1e-3] [--set train.steps=100]

Every config file runs at every point of the grid of `--set KEY=V1,V2,...` overrides (their
cartesian product; a value is parsed as `--config.KEY=V` is by main.py, and commas inside
brackets or quotes do not split, e.g. `train.length_buckets=(32,64),(64,128)`). A run lives
in WORKDIR/<name>: the config file's stem, plus `-key=value` for each key given several
values. Unknown keys and unparsable values stop the sweep before any run starts.

Each run is `python main.py --config=FILE --workdir=WORKDIR/<name> --config.KEY=V ...` in
its own process, one after another, its output appended to WORKDIR/<name>/train.log. A
process per run, rather than train_and_evaluate in this one, because a run that crashes,
runs out of memory or diverges then ends alone, with its one-line error in the table, and
gives its device memory back before the next run starts. A run is reused, not repeated,
when the trainer has written its results.json and its config.json holds this config's
values of every key that defines the experiment (specs.RESUME_MUST_MATCH: logging and
evaluation settings may differ); an unfinished run resumes from its checkpoint; a failed
one is tried again. Ctrl-C stops the current run (which saves a checkpoint) and the sweep;
the same command carries on.

Writes WORKDIR/results.csv (one row per run) and WORKDIR/report.md: dev metrics per run,
training loss per task and dev overall against the step (WORKDIR/plots/), the gradient
conflict of every run and its mtl_jax.diagnose plots (WORKDIR/<name>/diagnostics/).
Exit status: 0, 1 if a run failed, 2 for a bad command line, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from mtl_jax import diagnose, specs
from mtl_jax.data.files import TASKS
from mtl_jax.train import RESULTS_JSON

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "main.py")
METRICS = {"sst/accuracy": "SST acc", "quora/accuracy": "Quora acc",
           "sts/pearson": "STS Pearson", "overall": "overall"}
COLUMNS = ["run", "status", *METRICS, "step", "seconds", "first_step", "trainable_params",
           "params", "error", "config", "overrides"]


class SweepError(ValueError):
  """A sweep that cannot start (bad --set, unknown key, clashing names); one line."""


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: holds a ConfigDict.
class Run:
  name: str
  config_path: str
  overrides: tuple[tuple[str, str], ...]
  config: ml_collections.ConfigDict
  workdir: str

  def command(self) -> list[str]:
    return [sys.executable, MAIN, f"--config={self.config_path}", f"--workdir={self.workdir}",
            *(f"--config.{k}={v}" for k, v in self.overrides)]


# --- Planning: config files x grid -> runs, every config loaded (and checked) up front


def split_values(text: str) -> list[str]:
  """'a,(1,2),"x,y"' -> ['a', '(1,2)', '"x,y"']: commas inside brackets or quotes stay."""
  values, current, depth, quote = [], "", 0, None
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      values.append(current)
      current = ""
      continue
    current += ch
  return values + [current]


def parse_grid(sets: Sequence[str]) -> list[tuple[str, list[str]]]:
  """['k=v1,v2', ...] -> [(k, [v1, v2]), ...] in the order given."""
  grid: dict[str, list[str]] = {}
  for item in sets:
    key, sep, values = item.partition("=")
    if not sep or not key.strip() or not values:
      raise SweepError(f"--set {item!r}: expected KEY=VALUE[,VALUE...]")
    if key.strip() in grid:
      raise SweepError(f"--set: {key.strip()} given twice; list all its values in one --set")
    grid[key.strip()] = split_values(values)
  return list(grid.items())


def load_config(path: str, overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """The config main.py would train with: the file's config, locked, with the overrides
  parsed by ml_collections' config_flags exactly as main.py's --config.KEY=V flags."""
  problem = specs.config_file_problem(path)  # Missing, or a syntax error (with its line).
  if problem:
    raise SweepError(problem)
  if REPO not in sys.path:  # Config files import `configs.default`, as they do under main.py.
    sys.path.insert(0, REPO)
  argv = ["main.py", f"--config={path}", *(f"--config.{k}={v}" for k, v in overrides)]
  values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file("config", path, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
  except (AttributeError, KeyError) as e:
    raise SweepError(f"{path}: unknown config key in --set: "
                     f"{specs.unknown_key_message(e)}") from e
  except flags.Error as e:
    raise SweepError(f"{path}: {e}") from e
  return values.config


def _slug(value: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+-]+", "_", value).strip("_") or "_"


def plan(config_paths: Sequence[str], sets: Sequence[str], workdir: str) -> list[Run]:
  """Every (config file, grid point) as a Run; raises SweepError before anything runs."""
  grid = parse_grid(sets)
  keys = [k for k, _ in grid]
  short = {k: k.rsplit(".", 1)[-1] for k, values in grid if len(values) > 1}
  if len(set(short.values())) < len(short):  # e.g. model.dtype and other.dtype.
    short = {k: k for k in short}
  runs = []
  for path in config_paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    for point in itertools.product(*[values for _, values in grid]):
      overrides = tuple(zip(keys, point))
      name = "-".join([stem] + [f"{short[k]}={_slug(v)}" for k, v in overrides if k in short])
      runs.append(Run(name, path, overrides, load_config(path, overrides),
                      os.path.join(workdir, name)))
  clashes = [n for n, c in collections.Counter(r.name for r in runs).items() if c > 1]
  if clashes:
    raise SweepError(f"several runs would train in {os.path.join(workdir, clashes[0])}: "
                     "give the config files different names")
  return runs


# --- Running


def finished(run: Run) -> dict | None:
  """The run's results.json if it finished with this config's experiment keys, else None."""
  results, saved = (os.path.join(run.workdir, f) for f in (RESULTS_JSON, "config.json"))
  if not (os.path.isfile(results) and os.path.isfile(saved)):
    return None
  with open(saved) as f:
    if specs.resume_mismatches(json.load(f), run.config):
      return None
  with open(results) as f:
    return json.load(f)


def _launch(run: Run) -> str | None:
  """Trains `run` in its own process; returns None, or why it failed (one line)."""
  os.makedirs(run.workdir, exist_ok=True)
  log_path = os.path.join(run.workdir, "train.log")
  with open(log_path, "a") as log:
    log.write(f"$ {shlex.join(run.command())}\n")
    log.flush()
    start = log.tell()
    process = subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT)
    try:
      code = process.wait()
    except KeyboardInterrupt:
      process.wait()  # The Ctrl-C reached it too: it saves a checkpoint, then exits.
      raise
  return None if code == 0 else _failure(log_path, start, code)


def _failure(log_path: str, start: int, code: int) -> str:
  """main.py's `error: ...` line, else the last line of output (a traceback's exception)."""
  with open(log_path, errors="replace") as f:
    f.seek(start)
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
  if errors:
    return errors[-1]
  how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
  return f"{how}: {lines[-1]}" if lines else how


def _row(run: Run, status: str, results: dict | None = None, error: str = "") -> dict:
  r = results or {}
  return {"run": run.name, "status": status, **{m: r.get("metrics", {}).get(m) for m in METRICS},
          **{k: r.get(k) for k in ("step", "seconds", "first_step", "trainable_params", "params")},
          "error": error, "config": run.config_path,
          "overrides": " ".join(f"{k}={v}" for k, v in run.overrides)}


def execute(runs: Sequence[Run]) -> tuple[list[dict], bool]:
  """Trains the runs that have not finished, one after another: (a row per run, whether
  Ctrl-C stopped it; then the runs not reached are 'pending')."""
  rows = []
  try:
    for i, run in enumerate(runs, 1):
      results = finished(run)
      if results is not None:
        print(f"[{i}/{len(runs)}] {run.name}: finished before, reused")
        rows.append(_row(run, "reused", results))
        continue
      print(f"[{i}/{len(runs)}] {run.name}: training (log: {run.workdir}/train.log)", flush=True)
      error = _launch(run)
      results = None if error else finished(run)
      if error is None and results is None:
        error = f"main.py ended without writing {RESULTS_JSON}"
      print(f"[{i}/{len(runs)}] {run.name}: " + (f"failed: {error}" if error else "done"))
      rows.append(_row(run, "failed", error=error) if error else _row(run, "trained", results))
  except KeyboardInterrupt:
    return rows + [_row(run, "pending") for run in runs[len(rows):]], True
  return rows, False


# --- Report


def _plots(runs: Sequence[Run], workdir: str) -> tuple[dict[str, str], dict[str, dict]]:
  """({plot name: path}, {run name: diagnose summary}) from the runs' metrics.jsonl."""
  logs = {}
  for run in runs:
    try:
      logs[run] = diagnose.read_log(run.workdir)
    except diagnose.DiagnoseError:  # Never got to train: nothing to draw.
      continue
  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  paths = {}
  for k, task in enumerate(TASKS):
    lines = {run.name: ([r["step"] for r in rows], diagnose.task_columns(rows, "task_loss/")[:, k])
             for run, (rows, _) in logs.items() if rows}
    if lines:
      paths[f"{task} loss"] = diagnose.line_plot(
          os.path.join(out, f"loss_{task}.png"), f"Training loss: {task}", "loss", lines)
  dev = {run.name: ([r["step"] for r in d if "dev/overall" in r],
                    [r["dev/overall"] for r in d if "dev/overall" in r])
         for run, (_, d) in logs.items()}
  if any(len(steps) > 1 for steps, _ in dev.values()):
    paths["dev overall"] = diagnose.line_plot(
        os.path.join(out, "dev_overall.png"), "Dev overall score", "overall",
        {name: line for name, line in dev.items() if line[0]})
  summaries = {}
  for run, (rows, dev_rows) in logs.items():
    grad = [r for r in rows if "grad/cosine" in r]
    if grad:  # Not when only the heads train: no shared gradients.
      output = os.path.join(run.workdir, "diagnostics")
      os.makedirs(output, exist_ok=True)
      diagnose.plot(grad, dev_rows, output)
      summaries[run.name] = diagnose.summarize(grad, dev_rows)
  return paths, summaries


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  minutes, s = divmod(round(seconds), 60)
  return f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
          *("| " + " | ".join(r) + " |" for r in body)]


def _number(v, fmt: str = ".4f") -> str:
  return "-" if v is None else format(v, fmt)


def write_report(runs: Sequence[Run], rows: list[dict], workdir: str, command: str) -> list[str]:
  """Writes WORKDIR/results.csv, report.md and the PNGs; returns the paths of the first two."""
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, "results.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)

  plots, summaries = _plots(runs, workdir)
  link = lambda path: os.path.relpath(path, workdir)
  counts = collections.Counter(r["status"] for r in rows)
  best = max((r["overall"] for r in rows if r["overall"] is not None), default=None)
  lines = ["# Sweep report", "", f"`{command}`", "",
           f"{datetime.datetime.now():%Y-%m-%d %H:%M}: {len(rows)} runs, "
           + ", ".join(f"{n} {s}" for s, n in counts.items()) + ". "
           "Dev metrics of each run's last step; wall time of the process that finished it "
           "(loading and compilation included; * = resumed from a checkpoint).", ""]
  body = []
  for r in rows:
    cells = [_number(r[m]) for m in METRICS]
    if best is not None and r["overall"] == best:
      cells[-1] = f"**{cells[-1]}**"
    resumed = "*" if r["first_step"] else ""
    body.append([f"`{r['run']}`", r["status"], *cells, _number(r["step"], "d"),
                 _duration(r["seconds"]) + resumed, _number(r["trainable_params"], ",d")])
  lines += _table(["run", "status", *METRICS.values(), "steps", "wall time", "trainable params"],
                  body)
  failed = [r for r in rows if r["status"] == "failed"]
  if failed:
    lines += ["", "Failed:", ""] + [f"- `{r['run']}`: {r['error']} "
                                     f"([log]({r['run']}/train.log))" for r in failed]
  if plots:
    lines += ["", "## Training curves", ""] + [f"![{name}]({link(p)})" for name, p in plots.items()]
  if summaries:
    pairs = list(next(iter(summaries.values()))["pairs"])
    lines += ["", "## Gradient conflict", "",
              "Per pair of tasks, over the logged steps: mean cosine of the per-task gradients of "
              "the shared parameters / share of steps where it is negative "
              "(`python -m mtl_jax.diagnose`).", ""]
    lines += _table(["run", *pairs, "plots"], [
        [f"`{name}`", *(f"{_number(s['pairs'][p]['mean_cosine'], '+.3f')} / "
                        f"{_number(s['pairs'][p]['conflict_rate'], '.2f')}" for p in pairs),
         f"[cosine]({name}/diagnostics/cosine.png), "
         f"[conflict rate]({name}/diagnostics/conflict_rate.png)"]
        for name, s in summaries.items()])
  lines += ["", "## Runs", ""] + _table(["run", "command"], [
      [f"`{run.name}`", f"`{shlex.join(['python', os.path.relpath(MAIN), *run.command()[2:]])}`"]
      for run in runs])
  report_path = os.path.join(workdir, "report.md")
  with open(report_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return [report_path, csv_path]


def run_sweep(config_paths: Sequence[str], workdir: str, sets: Sequence[str] = (),
              command: str | None = None) -> list[dict]:
  """Plans (SweepError before any run), trains what has not finished, writes the report
  (also when interrupted); returns a row per run as in results.csv."""
  runs = plan(config_paths, sets, workdir)
  command = command or shlex.join(["python", "-m", "mtl_jax.sweep", "--configs", *config_paths,
                                   "--workdir", workdir, *(f"--set={s}" for s in sets)])
  rows, interrupted = execute(runs)
  for path in write_report(runs, rows, workdir, command):
    print(f"wrote {path}")
  if interrupted:
    raise KeyboardInterrupt
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mtl_jax.sweep", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", required=True, metavar="CONFIG",
                      help="config files (configs/*.py)")
  parser.add_argument("--workdir", required=True, help="one directory per run, and the report")
  parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=V1,V2",
                      help="override a config key for every run; several values make a grid")
  args = parser.parse_args(argv)
  try:
    rows = run_sweep(args.configs, args.workdir, args.sets)
  except SweepError as e:
    print(f"sweep: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("sweep: interrupted; the same command carries on", file=sys.stderr)
    return 130
  return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
