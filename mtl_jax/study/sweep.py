"""Several training runs, one report:

  python -m mtl_jax.sweep --configs=configs/default.py,configs/pcgrad.py --workdir=runs/sweep \\
      [--set=train.learning_rate=5e-4,1e-3] [--set=train.steps=100] \\
      [--seeds=0,1,2 --baseline=default] [--ledger=results/<study> [--rerun]] [--plan]

`--configs` lists the config files, comma-separated, or one per `--configs` (so the shell's
`--configs=configs/methods/{sum,pcgrad}.py` works). Every config file runs at every point of
the grid of `--set=KEY=V1,V2,...` overrides (their cartesian product; `--set` is repeated,
once per key; a value is parsed as `--config.KEY=V` is by main.py, and commas inside
brackets or quotes do not split, e.g. `train.length_buckets=(32,64),(64,128)`). A run lives
in WORKDIR/<name>: the config file's stem, plus `-key=value` for each key given several
values. Unknown keys and unparsable values stop the sweep before any run starts.
`--seeds=0,1,2` runs each of them at every seed (`--config.seed=S`, in WORKDIR/<name>-seed=S);
the report groups runs that differ only in seed (mean ± sd, and with `--baseline=NAME`
the paired difference from that configuration: mtl_jax.study.stats, mtl_jax.study.report).

Each run is `python main.py --config=FILE --workdir=WORKDIR/<name> --config.KEY=V ...` in
its own process, one after another, its output appended to WORKDIR/<name>/train.log. A
process per run, rather than train_and_evaluate in this one, because a run that crashes,
runs out of memory or diverges then ends alone, with its one-line error in the table, and
gives its device memory back before the next run starts. A run is reused, not repeated,
when the trainer has written its results.json and its config.json holds this config's
values of every key that defines the experiment (resume.RESUME_MUST_MATCH: logging and
evaluation settings may differ); an unfinished run resumes from its checkpoint; a failed
one is tried again. Ctrl-C stops the current run (which saves a checkpoint) and the sweep;
so do `kill -INT` or `kill` of the sweep (also one started with nohup ... &) or of its
current run; the same command carries on. A sweep killed outright (`kill -9`, the OOM
killer) takes its current run with it: on Linux the run gets SIGTERM from the kernel when
its sweep dies (PR_SET_PDEATHSIG), saves a checkpoint and exits, and the next sweep waits
for it to release its workdir (WAIT_FOR_HOLDER seconds) rather than failing it as in use.

Writes WORKDIR/results.csv (one row per run) and WORKDIR/report.md: dev metrics per run,
training loss per task and dev overall against the step (WORKDIR/plots/), the gradient
conflict of every run and its mtl_jax.diagnose plots (WORKDIR/<name>/diagnostics/).
With `--ledger=results/<study>` (mtl_jax.ledger) a (configuration, seed) the ledger already
holds with the same experiment keys is skipped, and each finished run is appended to the
ledger as soon as it finishes, with its training fingerprint (mtl_jax.study.fingerprint,
computed here from its config) and its dev predictions (ledger.save_predictions); the
ledger's report.md and plots are rewritten at the end.
`--rerun` trains the ledger's rows again (give a fresh --workdir) and records them as reruns,
which the report compares with the first run. `--plan` loads every config and prints the
runs, what would happen to each and its command, and trains nothing (docs/results.md).
Exit status: 0, 1 if a run failed, 2 for a bad command line, 130 when interrupted.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import fcntl
import functools
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import scores
from mtl_jax.config import loader, resume, run_spec, upgrade
from mtl_jax.runtime import workdir_lock
from mtl_jax.study import fingerprint, ledger, report
from mtl_jax.tools import cli
from mtl_jax.train import RESULTS_JSON

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # The checkout.
MAIN = os.path.join(REPO, "main.py")
if not os.path.isfile(MAIN):  # Pip-installed, no checkout: the trainer's own module file.
  MAIN = importlib.util.find_spec("mtl_jax.tools.train_cli").origin
COMMITS = "commits.txt"  # In a run's workdir: the code's commit at each launch that trained it.


FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_CONFIGS = flags.DEFINE_multi_string(
  "configs",
  None,
  "Config files (configs/*.py), comma-separated; or repeat --configs, one file each.",
  flag_values=FLAGS,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory of the runs (one subdirectory each) and the report.",
  flag_values=FLAGS,
)
_SETS = flags.DEFINE_multi_string(
  "set",
  [],
  "KEY=V1,V2,...: override a config key in every run; several values make a grid. Once per key.",
  flag_values=FLAGS,
)
_SEEDS = flags.DEFINE_string(
  "seeds", None, "Run every configuration at each seed, e.g. 0,1,2.", flag_values=FLAGS
)
_BASELINE = flags.DEFINE_string(
  "baseline",
  None,
  "The configuration the others are compared with, seed by seed.",
  flag_values=FLAGS,
)
_LEDGER = flags.DEFINE_string(
  "ledger", None, "A study's ledger directory, e.g. results/methods.", flag_values=FLAGS
)
_RERUN = flags.DEFINE_bool(
  "rerun",
  False,
  "Train the ledger's rows again and compare (use a fresh --workdir).",
  flag_values=FLAGS,
)
_PLAN = flags.DEFINE_bool(
  "plan",
  False,
  "Only load every config and print the runs and their commands.",
  flag_values=FLAGS,
)
cli.mark_required(FLAGS, ["configs", "workdir"])


class SweepError(ValueError):
  """A sweep that cannot start (bad --set, unknown key, clashing names); one line."""


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: holds a ConfigDict.
class Run:
  name: str  # The configuration, without the seed: runs of one name differ only in seed.
  seed: int
  config_path: str
  overrides: tuple[tuple[str, str], ...]
  config: ml_collections.ConfigDict
  workdir: str

  def command(self) -> list[str]:
    return [
      sys.executable,
      MAIN,
      f"--config={self.config_path}",
      f"--workdir={self.workdir}",
      *(f"--config.{k}={v}" for k, v in self.overrides),
    ]

  def display_command(self) -> str:
    """command() as a reader would type it from the current directory."""
    return shlex.join(["python", os.path.relpath(MAIN), *self.command()[2:]])

  @property
  def metrics(self) -> tuple[str, ...]:
    """Its tasks' flat dev metrics ("sst/accuracy", ...), task-axis order."""
    return scores.dev_metrics(run_spec.task_specs(self.config))

  @property
  def label(self) -> str:
    """The run's directory name: name, plus -seed=S in a sweep over seeds."""
    return os.path.basename(self.workdir)

  def ledger_command(self) -> str:
    """The `python main.py ...` line that reproduces the run from the repository root
    (without --workdir, which is the reader's choice)."""
    path = os.path.abspath(self.config_path)
    path = os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else self.config_path
    return shlex.join(
      ["python", "main.py", f"--config={path}", *(f"--config.{k}={v}" for k, v in self.overrides)]
    )


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
  problem = loader.config_file_problem(path)  # Missing, or a syntax error (with its line).
  if problem:
    raise SweepError(problem)
  argv = ["main.py", f"--config={path}", *(f"--config.{k}={v}" for k, v in overrides)]
  argv, grad_kwargs = loader.take_grad_kwargs(argv)  # As main.py: added after parsing.
  values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file(
      "config", path, flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
  except (AttributeError, KeyError) as e:
    raise SweepError(f"{path}: unknown config key in --set: {loader.unknown_key_message(e)}") from e
  except flags.Error as e:
    raise SweepError(f"{path}: {e}") from e
  try:
    value = values.config
  except flags.Error:  # get_config() returned None.
    value = None
  try:
    return loader.loaded_config(value, path, grad_kwargs)
  except run_spec.ConfigError as e:
    raise SweepError(str(e)) from e


def _slug(value: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+-]+", "_", value).strip("_") or "_"


def parse_seeds(text: str | None) -> list[int]:
  """'0,1,2' -> [0, 1, 2]; None -> [] (each config's own seed)."""
  if text is None:
    return []
  try:
    seeds = [int(s) for s in text.split(",")]
  except ValueError:
    raise SweepError(f"--seeds {text!r}: expected integers separated by commas") from None
  if len(set(seeds)) < len(seeds):
    raise SweepError(f"--seeds {text!r}: a seed is given twice")
  return seeds


def plan(
  config_paths: Sequence[str], sets: Sequence[str], workdir: str, seeds: Sequence[int] = ()
) -> list[Run]:
  """Every (config file, grid point[, seed]) as a Run; raises SweepError before anything runs."""
  grid = parse_grid(sets)
  if seeds and "seed" in dict(grid):
    raise SweepError("--set seed=... and --seeds both set the seed: use --seeds")
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
      for seed in seeds or [None]:
        run_overrides = overrides + ((("seed", str(seed)),) if seed is not None else ())
        config = load_config(path, run_overrides)
        label = name if seed is None else f"{name}-seed={seed}"
        try:  # A value that cannot work stops the sweep (and --plan) before any run.
          run_spec.build(config)
        except run_spec.ConfigError as e:
          raise SweepError(f"{label}: {e}") from e
        runs.append(
          Run(name, config.seed, path, run_overrides, config, os.path.join(workdir, label))
        )
  clashes = [n for n, c in collections.Counter(r.label for r in runs).items() if c > 1]
  if clashes:
    raise SweepError(
      f"several runs would train in {os.path.join(workdir, clashes[0])}: "
      "give the config files different names"
    )
  return runs


# --- Running


def finished(run: Run) -> dict | None:
  """The run's results.json if it finished with this config's experiment keys, else None."""
  results, saved = (os.path.join(run.workdir, f) for f in (RESULTS_JSON, "config.json"))
  if not (os.path.isfile(results) and os.path.isfile(saved)):
    return None
  try:
    saved_config = upgrade.read_run_config(run.workdir)
  except run_spec.ConfigError:  # Damaged: the run is started, and main.py's error names it.
    return None
  if resume.resume_mismatches(saved_config, run.config):
    return None
  with open(results) as f:
    return json.load(f)


INTERRUPTED = 130  # main.py's exit status after an interrupt (its checkpoint is saved).


WAIT_FOR_HOLDER = 120  # Seconds to wait for a run of a killed sweep to save and exit.
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
  """A run's preexec_fn: on Linux, have the kernel send it SIGTERM (save a checkpoint and
  exit, as `kill <run>` does) when the sweep that started it dies, even by `kill -9`."""
  if not sys.platform.startswith("linux"):
    return
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
  except (OSError, AttributeError):
    return
  if os.getppid() != parent:  # The sweep died before prctl: no signal would come.
    os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_holder(workdir: str, timeout: float = WAIT_FOR_HOLDER) -> None:
  """Waits (up to `timeout` seconds) while another process holds the workdir's training
  lock: the run of a sweep killed a moment ago, saving its checkpoint. Beyond that the
  run is started anyway, and main.py's error names the holder."""
  path = os.path.join(workdir, workdir_lock.LOCK_FILE)
  if not os.path.isfile(path):
    return
  deadline, said = time.monotonic() + timeout, False
  with open(path, "rb") as f:
    while True:
      try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
      except OSError:
        if time.monotonic() > deadline:
          return
        if not said:
          holder = f.read(200).decode("utf-8", "replace").strip()
          print(f"  waiting for the process holding {path} to exit ({holder})", flush=True)
          said = True
        time.sleep(0.5)
        continue
      fcntl.flock(f, fcntl.LOCK_UN)
      return


def _launch(run: Run) -> str | None:
  """Trains `run` in its own process; returns None, or why it failed (one line). Notes the
  code's commit first (COMMITS), for the ledger's `commit` column."""
  os.makedirs(run.workdir, exist_ok=True)
  with open(os.path.join(run.workdir, COMMITS), "a") as f:
    f.write(ledger.code_commit() + "\n")
  log_path = os.path.join(run.workdir, "train.log")
  with open(log_path, "a") as log:
    log.write(f"$ {shlex.join(run.command())}\n")
    log.flush()
    start = log.tell()
    # Its own session: a Ctrl-C at the terminal reaches the sweep alone, which passes it on
    # once, so `kill -INT <sweep>` (or SIGTERM) and Ctrl-C stop a run the same way.
    _wait_for_holder(run.workdir)
    process = subprocess.Popen(
      run.command(),
      stdout=log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
      preexec_fn=functools.partial(_die_with, os.getpid()),
    )
    try:
      code = process.wait()
    except KeyboardInterrupt:
      process.send_signal(signal.SIGINT)  # It saves a checkpoint after its step, then exits.
      process.wait()
      raise
  if code in (INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
    raise KeyboardInterrupt  # The run alone was stopped (`kill <run>`): so is the sweep.
  return None if code == 0 else _failure(log_path, start, code)


def _failure(log_path: str, start: int, code: int) -> str:
  """main.py's `error: ...` line, else the last line of output (a traceback's exception)."""
  with open(log_path, errors="replace") as f:
    f.seek(start)
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
  if errors:
    return errors[-1]
  how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
  return f"{how}: {lines[-1]}" if lines else how


def _commit(run: Run) -> str:
  """The commit the run was trained with; "a+b" when its launches saw different commits."""
  path = os.path.join(run.workdir, COMMITS)
  if not os.path.isfile(path):
    return "unknown"  # Trained by a sweep older than the ledger.
  with open(path) as f:
    return "+".join(sorted({line.strip() for line in f if line.strip()})) or "unknown"


def columns(runs: Sequence[Run]) -> list[str]:
  """WORKDIR/results.csv's header: the task columns of every run's tasks (ledger.columns;
  the union, first seen first, when the configurations train different tasks)."""
  metrics = list(dict.fromkeys(m for run in runs for m in run.metrics))
  values = list(ledger.metric_columns(metrics).values())
  return [
    "run",
    "name",
    "seed",
    "status",
    *values,
    "steps",
    "seconds",
    "machine",
    "first_step",
    "trainable_params",
    "params",
    *ledger.interval_columns(values),
    *ledger.GRAD_COLUMNS,
    "commit",
    "error",
    "config",
    "overrides",
    "command",
  ]


def _row(run: Run, status: str, results: dict | None = None, error: str = "") -> dict:
  r = results or {}
  return {
    "run": run.label,
    "name": run.name,
    "seed": run.seed,
    "status": status,
    **ledger.result_columns(r, run.metrics),
    **{k: r.get(k) for k in ("first_step", "trainable_params", "params")},
    **(ledger.grad_columns(run.workdir) if results else {}),
    "commit": _commit(run) if results else None,
    "error": error,
    "config": run.config_path,
    "overrides": " ".join(f"{k}={v}" for k, v in run.overrides),
    "command": run.ledger_command(),
  }


def _record(run: Run, row: dict, ledger_dir: str, held: list[dict], known: dict | None) -> None:
  """Appends a finished run to the ledger: as 'trained' when the ledger lacks its
  (name, seed, experiment), as 'rerun' when it was trained again in this sweep."""
  if known is not None and row["status"] != "trained":
    print(f"  {run.label}: not a rerun ({run.workdir} held a finished run): use a fresh --workdir")
    return
  config = upgrade.read_run_config(run.workdir)
  status = "trained" if known is None else "rerun"
  extra = {"fingerprint": _fingerprint(run), "predictions": _predictions(run, ledger_dir)}
  held.append(ledger.append(ledger_dir, {**row, **extra, "status": status}, config))
  print(f"  {run.label}: appended to {os.path.join(ledger_dir, 'results.csv')} ({status})")


def _fingerprint(run: Run) -> str | None:
  """mtl_jax.study.fingerprint of the run's config; None (and a note) if it cannot be
  computed: a row is never lost over its fingerprint."""
  try:
    return fingerprint.training_fingerprint(run.config)["fingerprint"]
  except Exception as e:  # Any failure leaves the cell empty, said aloud.
    print(f"  {run.label}: no training fingerprint ({type(e).__name__}: {e})")
    return None


def _predictions(run: Run, ledger_dir: str) -> str | None:
  """Stores the run's dev predictions in the ledger (ledger.save_predictions), against the
  dev files of its config; None (and a note) when it has none."""
  from mtl_jax.config import run_spec
  from mtl_jax.data import files

  c = run.config
  try:
    dev = [
      files.load_split(
        c.data_dir or files.default_data_dir(), t, "dev", c.strict_data, c.data_limit or None
      )
      for t in run_spec.task_specs(c)
      if "dev" in t.files
    ]
    rel = ledger.save_predictions(ledger_dir, run.name, run.seed, run.workdir, dev)
  except (OSError, ValueError) as e:
    print(f"  {run.label}: dev predictions not stored ({e})")
    return None
  if rel is None:
    print(f"  {run.label}: no dev predictions of its dev set in {run.workdir}/predictions")
  return rel


def execute(
  runs: Sequence[Run], ledger_dir: str | None = None, rerun: bool = False
) -> tuple[list[dict], bool]:
  """Trains the runs that have not finished, one after another: (a row per run, whether
  Ctrl-C stopped it; then the runs not reached are 'pending'). With a ledger, skips the
  runs it holds (unless `rerun`) and appends each run as soon as it finishes."""
  held = ledger.read(ledger_dir) if ledger_dir else []
  rows = []
  try:
    for i, run in enumerate(runs, 1):
      tag = f"[{i}/{len(runs)}] {run.label}"
      known = ledger.find(ledger_dir, held, run.name, run.seed, run.config) if ledger_dir else None
      if known is not None and not rerun:
        print(f"{tag}: in the ledger {ledger_dir}, skipped")
        rows.append({**known, "run": run.label, "status": "ledger", "config": run.config_path})
        continue
      results = finished(run)
      if results is not None:
        print(f"{tag}: finished before, reused")
        rows.append(_row(run, "reused", results))
      else:
        print(f"{tag}: training (log: {run.workdir}/train.log)", flush=True)
        error = _launch(run)
        results = None if error else finished(run)
        if error is None and results is None:
          error = f"main.py ended without writing {RESULTS_JSON}"
        print(f"{tag}: " + (f"failed: {error}" if error else "done"))
        rows.append(_row(run, "failed", error=error) if error else _row(run, "trained", results))
      if ledger_dir and results is not None:
        _record(run, rows[-1], ledger_dir, held, known)
  except KeyboardInterrupt:
    return rows + [_row(run, "pending") for run in runs[len(rows) :]], True
  return rows, False


def show_plan(runs: Sequence[Run], ledger_dir: str | None = None) -> list[str]:
  """One line per run: what the sweep would do with it, and its command; trains nothing."""
  held = ledger.check(ledger_dir) if ledger_dir else []
  if ledger_dir:
    ledger.check_tasks(ledger_dir, {run.label: run.metrics for run in runs})
  lines = []
  for run in runs:
    if ledger_dir and ledger.find(ledger_dir, held, run.name, run.seed, run.config):
      what = "in the ledger"
    else:
      what = "finished, reuse" if finished(run) is not None else "train"
    lines.append(f"{run.label:<24} {what:<15} {run.ledger_command()}")
  return lines


def _check_baseline(runs: Sequence[Run], baseline: str | None) -> None:
  names = list(dict.fromkeys(run.name for run in runs))
  if baseline is not None and baseline not in names:
    raise SweepError(f"--baseline {baseline}: not one of the configurations {names}")


def run_sweep(
  config_paths: Sequence[str],
  workdir: str,
  sets: Sequence[str] = (),
  command: str | None = None,
  seeds: Sequence[int] = (),
  baseline: str | None = None,
  ledger_dir: str | None = None,
  rerun: bool = False,
) -> list[dict]:
  """Plans (SweepError before any run), trains what has not finished (and is not in the
  ledger), writes the report (also when interrupted); returns a row per run as in results.csv."""
  runs = plan(config_paths, sets, workdir, seeds)
  _check_baseline(runs, baseline)
  if rerun and not ledger_dir:
    raise SweepError("--rerun needs --ledger (it reruns the rows a ledger holds)")
  command = command or shlex.join(
    [
      "python",
      "-m",
      "mtl_jax.sweep",
      f"--configs={','.join(config_paths)}",
      f"--workdir={workdir}",
      *(f"--set={s}" for s in sets),
      *([f"--seeds={','.join(map(str, seeds))}"] if seeds else []),
      *([f"--baseline={baseline}"] if baseline else []),
      *([f"--ledger={ledger_dir}"] if ledger_dir else []),
    ]
  )
  if ledger_dir:
    try:
      ledger.check(ledger_dir)
      ledger.check_tasks(ledger_dir, {run.label: run.metrics for run in runs})
    except ledger.LedgerError as e:
      raise SweepError(str(e)) from e
    ledger.write_study(ledger_dir, baseline or ledger.read_study(ledger_dir)["baseline"], command)
  rows, interrupted = execute(runs, ledger_dir, rerun)
  paths = report.write_sweep_report(runs, rows, workdir, command, columns(runs), baseline)
  if ledger_dir:
    paths.append(report.write_ledger(runs, ledger_dir))
  for path in paths:
    print(f"wrote {path}")
  if interrupted:
    raise KeyboardInterrupt
  return rows


def main(argv: list[str]) -> int:
  """The command line (module docstring); returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected argument(s) {shlex.join(argv[1:])}: list several config files as "
      "--configs=a.py,b.py (or give --configs once per file)"
    )
  configs = [path for value in _CONFIGS.value for path in value.split(",") if path]
  try:
    if _PLAN.value:
      runs = plan(configs, _SETS.value, _WORKDIR.value, parse_seeds(_SEEDS.value))
      _check_baseline(runs, _BASELINE.value)
      print("\n".join(show_plan(runs, _LEDGER.value)))
      return 0
    rows = run_sweep(
      configs,
      _WORKDIR.value,
      _SETS.value,
      seeds=parse_seeds(_SEEDS.value),
      baseline=_BASELINE.value,
      ledger_dir=_LEDGER.value,
      rerun=_RERUN.value,
    )
  except (SweepError, ledger.LedgerError) as e:
    print(f"sweep: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("sweep: interrupted; the same command carries on", file=sys.stderr)
    return 130
  return 1 if any(r["status"] == "failed" for r in rows) else 0


def stop_on_signals() -> None:
  """Ctrl-C, `kill -INT` and `kill` all stop the current run with a checkpoint and then
  the sweep, also when a shell started it in the background with SIGINT ignored (nohup)."""
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.default_int_handler)


if __name__ == "__main__":
  stop_on_signals()
  cli.run(main, FLAGS)
