"""mtl_jax.sweep: two tiny configurations at seeds 0 and 1 and a failing one make one
report and a ledger; a rerun reuses them; the grid, the run names and the errors that stop
a sweep before it starts."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import DATA_DIR, needs_data

from mtl_jax import prediction_files
from mtl_jax.study import ledger, sweep
from mtl_jax.study.report import metric_labels
from mtl_jax.tools import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONFIG = """
from configs import default


def get_config():
  config = default.get_config()
  config.model.path = {model!r}
  config.model.max_length = 32
  config.data_dir = {data!r}
  config.data_limit = 24
  config.grad.method = {method!r}
  config.train.length_buckets = (32,)
  config.train.seqs_per_task = 8
  config.train.steps = 2
  config.train.log_every = 1
  config.train.eval_every = 1
  config.eval.seqs_per_batch = 16
  config.eval.write_predictions = True
  return config
"""


def write_config(directory, name: str, model: str, method: str = "sum") -> str:
  path = os.path.join(directory, f"{name}.py")
  with open(path, "w") as f:
    f.write(CONFIG.format(model=model, data=DATA_DIR, method=method))
  return path


SEEDS = (0, 1)
RUNS = [f"{n}-seed={s}" for n in ("a", "b", "bad") for s in SEEDS]


@pytest.fixture(scope="module")
def swept(tiny_bert_dir, tmp_path_factory):
  """One sweep at seeds 0 and 1 with a ledger: configs a (summed loss, the baseline) and
  b (PCGrad) train, `bad` names no model."""
  tmp = tmp_path_factory.mktemp("sweep")
  configs = [
    write_config(tmp, "a", tiny_bert_dir),
    write_config(tmp, "b", tiny_bert_dir, "pcgrad"),
    write_config(tmp, "bad", str(tmp / "no_such_model")),
  ]
  workdir = str(tmp / "runs")
  return (
    configs,
    workdir,
    sweep.run_sweep(configs, workdir, seeds=SEEDS, baseline="a", ledger_dir=str(tmp / "ledger")),
  )


@needs_data
def test_runs_appear_in_results_csv_and_report(swept):
  _, workdir, rows = swept
  with open(os.path.join(workdir, "results.csv")) as f:
    table = {r["run"]: r for r in csv.DictReader(f)}
  assert list(table) == RUNS
  for run in RUNS[:4]:
    assert table[run]["status"] == "trained" and table[run]["seed"] == run[-1]
    for metric in metric_labels([table[run]]):
      assert math.isfinite(float(table[run][metric]))
    assert table[run]["steps"] == "2" and int(table[run]["trainable_params"]) > 0
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "| `a-seed=0` | trained |" in report and "| `b-seed=1` | trained |" in report
  assert "| `b` | 2 |" in report  # Differences from the baseline over the two seeds.
  for png in [
    "plots/loss_sst.png",
    "plots/loss_quora.png",
    "plots/loss_sts.png",
    "plots/dev_overall.png",
    "a-seed=0/diagnostics/cosine.png",
    "b-seed=1/diagnostics/conflict_rate.png",
  ]:
    assert f"({png})" in report
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == PNG_MAGIC, png
  assert "sst-quora" in report  # The gradient-conflict table.


@needs_data
def test_finished_runs_are_in_the_ledger_with_bootstrap_intervals(swept):
  configs, workdir, _ = swept
  directory = os.path.join(os.path.dirname(workdir), "ledger")
  rows = ledger.read(directory)
  assert [(r["name"], r["seed"], r["status"]) for r in rows] == [
    (n, s, "trained") for n in ("a", "b") for s in SEEDS
  ]
  head = subprocess.run(
    ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True
  ).stdout.strip()
  for row in rows:
    assert row["commit"].startswith(head)
    assert (
      row["command"] == f"python main.py --config={configs[0 if row['name'] == 'a' else 1]} "
      f"--config.seed={row['seed']}"
    )
    with open(os.path.join(workdir, f"{row['name']}-seed={row['seed']}", "results.json")) as f:
      results = json.load(f)
    assert results["bootstrap"]["intervals"]["overall"] == [row["overall_lo"], row["overall_hi"]]
    for c in ("sst_acc", "quora_acc"):  # The files hold these predictions exactly.
      assert row[f"{c}_lo"] <= row[c] <= row[f"{c}_hi"]
    assert -1 <= row["grad_cosine"] <= 1 and 0 <= row["grad_conflict_rate"] <= 1
  with open(os.path.join(directory, "report.md")) as f:
    report = f.read()
  b = [r for r in rows if r["name"] == "b"]
  assert all(r["grad_removed"] is not None for r in b)  # PCGrad reports what it removed.
  # Fingerprints: one step per configuration, one batches/dropout pair per seed.
  parts = {(r["name"], r["seed"]): r["fingerprint"].split("/") for r in rows}
  assert parts["a", 0][0] == parts["a", 1][0] != parts["b", 0][0] == parts["b", 1][0]
  assert parts["a", 0][1:] == parts["b", 0][1:] != parts["a", 1][1:] == parts["b", 1][1:]
  # Dev predictions, stored compactly, equal to the run's files.
  labels = ledger.load_labels(directory)
  for row in rows:
    assert row["predictions"] == f"predictions/{row['name']}-seed={row['seed']}.npz"
    assert os.path.getsize(os.path.join(directory, row["predictions"])) < 4_000
    stored = ledger.load_predictions(directory, row)
    run_dir = os.path.join(workdir, f"{row['name']}-seed={row['seed']}")
    for task, file in (("sst", "sst-dev-output.csv"), ("sts", "sts-dev-output.csv")):
      _, _, values = prediction_files.read_predictions(os.path.join(run_dir, "predictions", file))
      assert stored[task] == pytest.approx(values, abs=3e-3)  # STS in float16.
      assert len(labels[task]) == len(values)
  section = report[report.index("## Paired bootstrap over dev examples") :]
  assert "| `b` | 0,1 | " in section.split("\n## ")[0]  # Computed from the stored predictions.
  assert "- Paired bootstrap over dev examples: 4 of 4 rows have stored dev predictions" in report
  assert "| `a` | 2 | 0,1 |" in report and "## Gradient diagnostics" in report
  assert "Not in the ledger yet: `bad` seed 0, `bad` seed 1." in report
  for png in ("loss_sst.png", "dev_overall.png"):
    assert f"(plots/{png})" in report
    assert os.path.getsize(os.path.join(directory, "plots", png)) <= 200_000


@needs_data
def test_a_failed_run_is_a_row_with_its_error(swept):
  _, workdir, rows = swept
  bad = rows[-1]
  assert bad["status"] == "failed" and bad["overall"] is None and bad["run"] == "bad-seed=1"
  assert "no_such_model" in bad["error"] and "does not exist" in bad["error"]
  with open(os.path.join(workdir, "report.md")) as f:
    assert f"`bad-seed=1`: {bad['error']}" in f.read()


@needs_data
def test_rerun_reuses_finished_runs(swept, monkeypatch, tmp_path):
  configs, workdir, _ = swept
  stamp = lambda: {
    p: os.stat(os.path.join(workdir, n, p)).st_mtime_ns
    for n in RUNS[:4]
    for p in ("metrics.jsonl", "results.json", "checkpoints")
  }
  before = stamp()
  launched = []
  monkeypatch.setattr(sweep, "_launch", lambda run: launched.append(run.label) or "still bad")
  rows = sweep.run_sweep(configs, workdir, seeds=SEEDS)
  assert launched == RUNS[4:]  # Only the failed runs are tried again.
  assert [r["status"] for r in rows] == ["reused"] * 4 + ["failed"] * 2
  assert stamp() == before
  launched.clear()  # With the ledger, its rows are not even looked up in the workdir.
  rows = sweep.run_sweep(
    configs,
    str(tmp_path / "elsewhere"),
    seeds=SEEDS,
    ledger_dir=os.path.join(os.path.dirname(workdir), "ledger"),
  )
  assert launched == RUNS[4:]
  assert [r["status"] for r in rows] == ["ledger"] * 4 + ["failed"] * 2


def test_grid_names_and_overrides(tiny_bert_dir, tmp_path):
  config = write_config(tmp_path, "a", tiny_bert_dir)
  runs = sweep.plan(
    [config],
    ["train.learning_rate=1e-3,5e-4", "train.length_buckets=(16,32)", "grad.method=sum,pcgrad"],
    str(tmp_path / "runs"),
  )
  assert [r.name for r in runs] == [
    "a-learning_rate=1e-3-method=sum",
    "a-learning_rate=1e-3-method=pcgrad",
    "a-learning_rate=5e-4-method=sum",
    "a-learning_rate=5e-4-method=pcgrad",
  ]
  last = runs[-1]
  assert (last.config.train.learning_rate, last.config.grad.method) == (5e-4, "pcgrad")
  assert last.config.train.length_buckets == (16, 32)  # One value: in every run, not the name.
  assert last.command()[-3:] == [
    "--config.train.learning_rate=5e-4",
    "--config.train.length_buckets=(16,32)",
    "--config.grad.method=pcgrad",
  ]
  assert sweep.split_values("a,(1,2),'x,y',[3]") == ["a", "(1,2)", "'x,y'", "[3]"]


@pytest.mark.parametrize(
  "args, message",
  [
    (["--set", "train.stepz=1,2"], "unknown config key in --set: 'stepz' Did you mean \"steps\""),
    (["--set", "train.steps=two"], "flag --config.train.steps=two"),
    (["--set", "train.steps"], "expected KEY=VALUE"),
    (["--set", "seed=1", "--set", "seed=2"], "seed given twice"),
    (["--set", "grad.method=sum,bogus"], "a-method=bogus: config.grad.method: unknown"),
    (["--plan", "--set", "train.steps=-3"], "a: config.train.steps: must be >= 1"),
    (["--plan", "--seeds=-1"], "a-seed=-1: config.seed: must be an integer"),
  ],
)
def test_bad_sweep_stops_before_any_run(tiny_bert_dir, tmp_path, capsys, args, message):
  config = write_config(tmp_path, "a", tiny_bert_dir)
  workdir = tmp_path / "runs"
  status = cli.call(
    sweep.main, sweep.FLAGS, ["sweep", f"--configs={config}", f"--workdir={workdir}", *args]
  )
  assert status == 2
  assert message in capsys.readouterr().err
  assert not workdir.exists()


def test_a_grid_over_a_gradient_method_argument(tiny_bert_dir, tmp_path):
  config = write_config(tmp_path, "a", tiny_bert_dir)
  runs = sweep.plan(
    [config], ["grad.method=cagrad", "grad.kwargs.c=0.2,0.5"], str(tmp_path / "runs")
  )
  assert [r.config.grad.kwargs.c for r in runs] == [0.2, 0.5]
  assert runs[1].command()[-1] == "--config.grad.kwargs.c=0.5"


def test_configs_are_comma_separated_or_repeated(tiny_bert_dir, tmp_path, capsys):
  a, b = write_config(tmp_path, "a", tiny_bert_dir), write_config(tmp_path, "b", tiny_bert_dir)
  rest = [f"--workdir={tmp_path / 'runs'}", "--plan"]
  for configs in ([f"--configs={a},{b}"], [f"--configs={a}", f"--configs={b}"]):
    assert cli.call(sweep.main, sweep.FLAGS, ["sweep", *configs, *rest]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["a", "b"]
  # argparse's `--configs a.py b.py` would leave b.py a stray argument: refused, not dropped.
  assert cli.call(sweep.main, sweep.FLAGS, ["sweep", "--configs", a, b, *rest]) == 2
  assert capsys.readouterr().err.splitlines() == [
    f"sweep: error: unexpected argument(s) {b}: list several config files as "
    "--configs=a.py,b.py (or give --configs once per file)"
  ]


def test_cli_error_is_one_line(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "mtl_jax.sweep",
      "--configs=configs/default.py,configs/default.py",
      f"--workdir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    f"sweep: error: several runs would train in {tmp_path / 'default'}: "
    "give the config files different names"
  ]


# A stand-in for main.py: says it started, then waits for SIGINT, counts the SIGINTs that
# reach it within half a second more, and exits 130 as main.py does after an interrupt.
FAKE_RUN = r"""
import pathlib, signal, sys, time
out, got = pathlib.Path(sys.argv[1]), []
signal.signal(signal.SIGINT, lambda *_: got.append(1))
out.write_text("started")
end = time.time() + 120
while not got and time.time() < end:
  time.sleep(0.05)
time.sleep(0.5)
out.write_text(str(len(got)))
sys.exit(130 if got else 0)
"""

# The sweep's command line process, with main.py replaced by FAKE_RUN.
FAKE_SWEEP = r"""
import json, os, sys
from mtl_jax.config import defaults
from mtl_jax.study import sweep
sweep.Run.command = lambda run: [sys.executable, "-c", {fake!r}, os.path.join(run.workdir, "s")]
runs = [
  sweep.Run(n, 0, n + ".py", (), defaults.get_config(), os.path.join({tmp!r}, n))
  for n in ("a", "b")
]
sweep.stop_on_signals()
rows, interrupted = sweep.execute(runs)
print(json.dumps([r["status"] for r in rows]))
sys.exit(130 if interrupted else 0)
"""


def _fake_runs(tmp_path) -> list:
  """Two runs of the default config (its tasks name the rows' columns)."""
  from mtl_jax.config import defaults

  return [sweep.Run(n, 0, f"{n}.py", (), defaults.get_config(), str(tmp_path / n)) for n in "ab"]


def test_a_run_stopped_on_its_own_stops_the_sweep(tmp_path, monkeypatch):
  """`kill <run>`: the run saves and exits 130; the sweep stops instead of going on."""
  monkeypatch.setattr(sweep.Run, "command", lambda run: [sys.executable, "-c", "exit(130)"])
  rows, interrupted = sweep.execute(_fake_runs(tmp_path))
  assert interrupted and [r["status"] for r in rows] == ["pending", "pending"]
  assert not os.path.exists(tmp_path / "b")  # Never launched.


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_the_sweep_stops_its_run_once_with_a_checkpoint(tmp_path, signum):
  """Ctrl-C at a terminal (SIGINT to the sweep's process group) or `kill <sweep>`: the run
  gets exactly one SIGINT (a second would stop it at once, mid-save), and nothing after it
  starts."""
  script = FAKE_SWEEP.format(fake=FAKE_RUN, tmp=str(tmp_path))
  sweep_process = subprocess.Popen(
    [sys.executable, "-c", script],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
    start_new_session=True,  # Its own process group, as a terminal's foreground job.
  )
  signals = tmp_path / "a" / "s"
  for _ in range(600):
    if signals.exists():
      break
    time.sleep(0.1)
  os.killpg(sweep_process.pid, signum)
  out = sweep_process.communicate(timeout=60)[0]
  assert sweep_process.returncode == 130
  assert signals.read_text() == "1"
  assert json.loads(out.splitlines()[-1]) == ["pending", "pending"]
  assert not os.path.exists(tmp_path / "b")


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
  except FileNotFoundError:
    return False


@needs_data
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sweep_killed_with_kill_9_takes_its_run_with_it_after_a_checkpoint(
  tiny_bert_dir, tmp_path
):
  """`kill -9` of the sweep (or the OOM killer): its run used to train on with no parent,
  and the next sweep failed it as "in use by PID". Now the kernel sends the run SIGTERM:
  it saves a checkpoint, says so, and exits."""
  config = write_config(tmp_path, "a", tiny_bert_dir)
  workdir = tmp_path / "runs"
  sweep_process = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "mtl_jax.sweep",
      f"--configs={config}",
      f"--workdir={workdir}",
      "--set=train.steps=100000",
      "--set=train.eval_every=0",
    ],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  run_dir = workdir / "a"
  deadline = time.time() + 400
  while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size):
    assert sweep_process.poll() is None and time.time() < deadline
    time.sleep(0.2)
  pid = json.loads((run_dir / "train.lock").read_text())["pid"]
  sweep_process.kill()
  sweep_process.wait(timeout=60)
  deadline = time.time() + 120
  while _alive(pid):
    assert time.time() < deadline, "the sweep's run trains on without its sweep"
    time.sleep(0.2)
  log = (run_dir / "train.log").read_text()
  assert "interrupted: saved step" in log, log[-2000:]
  assert (run_dir / "train.lock").read_text() == ""  # Released.
  assert os.listdir(run_dir / "checkpoints")
