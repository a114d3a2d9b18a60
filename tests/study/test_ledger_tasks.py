"""The study tools with declared tasks: a ledger of four-task runs (the three CS224N tasks
and CFIMDB, as configs/four_tasks.py) written row by row, its report and its paired
bootstrap against a NumPy transcription of the documented resampling; a run with other
tasks refused in one line; the committed CS224N ledgers read and render unchanged; the
loss plots and diagnose of a four-task run. Nothing trains: rows, prediction files and
metrics logs are written directly."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import types

import numpy as np
import pytest

from configs import four_tasks
from mtl_jax import scores
from mtl_jax.study import ledger, report, stats, sweep
from mtl_jax.tools import cli, diagnose

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOUR = ("sst/accuracy", "quora/accuracy", "sts/pearson", "cfimdb/accuracy")
COLUMNS = {"sst_acc", "quora_acc", "sts_pearson", "cfimdb_acc"}


def test_task_columns_keep_the_cs224n_names_and_invert():
  assert ledger.metric_columns(scores.DEV_METRICS) == {
    "sst/accuracy": "sst_acc",
    "quora/accuracy": "quora_acc",
    "sts/pearson": "sts_pearson",
    "overall": "overall",
  }
  header = ledger.columns(FOUR)
  assert ledger.task_metrics(header) == FOUR  # Read back from a header, in its order.
  assert ledger.task_metrics(ledger.columns(())) == ()  # No other column looks like one.
  assert header.index("cfimdb_acc") < header.index("overall") < header.index("cfimdb_acc_lo")
  assert report.metric_labels([dict.fromkeys(header)]) == {
    "sst_acc": "SST acc",
    "quora_acc": "Quora acc",
    "sts_pearson": "STS Pearson",
    "cfimdb_acc": "cfimdb acc",
    "overall": "overall",
  }


def test_the_committed_cs224n_ledgers_read_and_render_unchanged(tmp_path):
  recipe = os.path.join(REPO, "results", "recipe")
  with open(os.path.join(recipe, "results.csv"), newline="") as f:
    header = next(csv.reader(f))
  assert header == ledger.columns(scores.DEV_METRICS)  # Appending rewrites nothing.
  methods = os.path.join(REPO, "results", "methods")
  copy = str(tmp_path / "methods")
  shutil.copytree(methods, copy)
  assert ledger.ledger_metrics(copy) == scores.DEV_METRICS
  assert all(isinstance(r["sts_pearson"], float) for r in ledger.read(copy))
  with open(os.path.join(methods, "report.md")) as f:
    committed = f.read().splitlines()
  with open(report.write_ledger_report(copy)) as f:
    rendered = f.read().splitlines()
  # Line 3 names the date and the directory it was generated from; all else is the same.
  assert rendered[3:] == committed[3:] and rendered[:2] == committed[:2]


# --- A four-task ledger, written row by row

SEEDS = (0, 1)
N = {"sst": 9, "quora": 10, "sts": 12, "cfimdb": 11}  # Dev examples per task.


def _dev_set(rng) -> tuple[dict, dict]:
  """(labels, {(name, seed): predictions}) of the four tasks; STS values are multiples of
  0.25, which the stored float16 holds exactly."""
  labels = {
    "sst": rng.integers(0, 5, N["sst"]),
    "quora": rng.integers(0, 2, N["quora"]),
    "sts": rng.integers(0, 21, N["sts"]) / 4,
    "cfimdb": rng.integers(0, 2, N["cfimdb"]),
  }

  def noisy(task: str, right: float) -> np.ndarray:
    if task == "sts":
      return np.clip(labels["sts"] + rng.integers(-6, 7, N["sts"]) / 4, 0, 5)
    other = (labels[task] + 1) % (5 if task == "sst" else 2)
    return np.where(rng.random(N[task]) < right, labels[task], other)

  preds = {
    (name, seed): {t: noisy(t, right) for t in N}
    for name, right in (("base", 0.6), ("new", 0.75))
    for seed in SEEDS
  }
  return labels, preds


def _metric(task: str, pred: np.ndarray, gold: np.ndarray) -> float:
  """Accuracy, or Pearson's r by NumPy (a constant side: 0, the documented rule)."""
  if task != "sts":
    return float(np.mean(pred == gold))
  if np.all(pred == pred[0]) or np.all(gold == gold[0]):
    return 0.0
  return float(np.corrcoef(pred, gold)[0, 1])


def _overall(values: dict) -> float:
  """The documented formula: the mean of accuracies and (r + 1) / 2."""
  return float(np.mean([(v + 1) / 2 if t == "sts" else v for t, v in values.items()]))


def _reference_bootstrap(config, baseline, labels, order, resamples, seed) -> dict:
  """The paired bootstrap as docs/results.md states it, one resample at a time: per task in
  `order`, default_rng(seed).integers(0, n, (resamples, n)); each run scored on those
  examples; the difference the mean over seeds of config - baseline; 95% percentiles."""
  rng = np.random.default_rng(seed)
  draws = {t: rng.integers(0, N[t], (resamples, N[t])) for t in order}
  diff = {m: np.zeros(resamples) for m in (*order, "overall")}
  for c, b in zip(config, baseline):
    for k in range(resamples):
      got = {}
      for run, sign in ((c, 1.0), (b, -1.0)):
        values = {t: _metric(t, run[t][draws[t][k]], labels[t][draws[t][k]]) for t in order}
        for t, v in (*values.items(), ("overall", _overall(values))):
          got[t] = got.get(t, 0.0) + sign * v
      for t, v in got.items():
        diff[t][k] += v / len(config)
  return {t: (np.percentile(d, 2.5), np.percentile(d, 97.5), d) for t, d in diff.items()}


def test_paired_bootstrap_of_four_tasks_against_numpy():
  labels, preds = _dev_set(np.random.default_rng(1))
  config = [preds["new", s] for s in SEEDS]
  baseline = [preds["base", s] for s in SEEDS]
  order = ("cfimdb", "sst", "sts", "quora")  # Another task order: other draws per task.
  metrics = tuple(next(m for m in FOUR if m.startswith(t + "/")) for t in order)
  got = stats.paired_bootstrap(config, baseline, labels, metrics, resamples=300, seed=5)
  want = _reference_bootstrap(config, baseline, labels, order, 300, 5)
  for t, m in (*zip(order, metrics), ("overall", "overall")):
    np.testing.assert_allclose(got[m]["samples"], want[t][2], atol=1e-12, err_msg=m)
    assert (got[m]["low"], got[m]["high"]) == pytest.approx(want[t][:2], abs=1e-12)
  point = np.mean([_metric("cfimdb", c["cfimdb"], labels["cfimdb"]) for c in config]) - np.mean(
    [_metric("cfimdb", b["cfimdb"], labels["cfimdb"]) for b in baseline]
  )
  assert got["cfimdb/accuracy"]["mean"] == pytest.approx(point, abs=1e-12)


def _config(seed: int) -> dict:
  config = four_tasks.get_config()
  config.seed = seed
  return json.loads(config.to_json_best_effort())


@pytest.fixture
def four_task_ledger(tmp_path):
  """(directory, labels, predictions, rows): two configurations x two seeds of four-task
  rows appended with their stored dev predictions, baseline "base"."""
  directory = str(tmp_path / "four")
  labels, preds = _dev_set(np.random.default_rng(2))
  os.makedirs(os.path.join(directory, ledger.PREDICTIONS))
  ids = {f"{t}_ids": np.asarray(f"sha-{t}") for t in N}
  np.savez_compressed(
    os.path.join(directory, ledger.PREDICTIONS, ledger.LABELS_NPZ), **labels, **ids
  )
  rows = []
  for (name, seed), p in preds.items():
    values = {t: _metric(t, p[t], labels[t]) for t in N}
    rel = os.path.join(ledger.PREDICTIONS, f"{name}-seed={seed}.npz")
    stored = {t: p[t].astype(np.float16 if t == "sts" else np.int8) for t in N}
    np.savez_compressed(os.path.join(directory, rel), **stored, **ids)
    row = {
      "name": name,
      "seed": seed,
      "status": "trained",
      "commit": "0123456789ab",
      "command": f"python main.py --config=configs/four_tasks.py --config.seed={seed}",
      "steps": 300,
      "seconds": 60.0,
      "grad_cosine": 0.01 * (seed + 1),
      "predictions": rel,
      **ledger.result_columns(
        {
          "metrics": {**{m: values[m.partition("/")[0]] for m in FOUR}, "overall": _overall(values)}
        },
        FOUR,
      ),
    }
    rows.append(ledger.append(directory, row, _config(seed)))
  ledger.write_study(directory, "base", "python -m mtl_jax.sweep ...")
  return directory, labels, preds, rows


def test_a_four_task_ledger_round_trips_and_reports_its_fourth_task(four_task_ledger):
  directory, labels, preds, rows = four_task_ledger
  with open(os.path.join(directory, "results.csv"), newline="") as f:
    assert next(csv.reader(f)) == ledger.columns(FOUR)
  read = ledger.read(directory)
  assert [{k: r[k] for k in COLUMNS} for r in read] == [{k: r[k] for k in COLUMNS} for r in rows]
  assert all(isinstance(r["cfimdb_acc"], float) for r in read)
  assert ledger.read_study(directory)["equivalence_margin"]["cfimdb_acc"] == ledger.TASK_MARGIN
  text = open(report.write_ledger_report(directory)).read()
  # Over seeds: mean ± sd of the fourth task's accuracy, by hand.
  acc = [_metric("cfimdb", preds["new", s]["cfimdb"], labels["cfimdb"]) for s in SEEDS]
  assert f"{np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f}" in text
  assert (
    "| configuration | n | seeds | SST acc | Quora acc | STS Pearson | cfimdb acc | overall |"
    in text
  )
  assert "(configurations × 5 metrics)" in text and "averaged over the six task pairs" in text
  assert "cfimdb acc ±0.01" in text  # The margins of the ledger's columns.
  # The paired bootstrap's fourth-task cell, against the NumPy transcription.
  config = [preds["new", s] for s in SEEDS]
  base = [preds["base", s] for s in SEEDS]
  order = tuple(m.partition("/")[0] for m in FOUR)
  want = _reference_bootstrap(config, base, labels, order, stats.RESAMPLES, stats.BOOTSTRAP_SEED)
  row = next(line for line in text.splitlines() if line.startswith("| `new` | 0,1 |"))
  cells = row.split(" | ")  # configuration, seeds, SST, Quora, STS, cfimdb, overall.
  for cell, task in ((cells[5], "cfimdb"), (cells[6], "overall")):
    low, high, _ = want[task]
    assert f"[{low:+.4f}, {high:+.4f}]" in cell, (task, cell, low, high)


def test_a_run_with_other_tasks_is_refused_in_one_line(four_task_ledger, tmp_path, capsys):
  directory, *_ = four_task_ledger
  three = {"name": "sum", "seed": 0, "status": "trained"}
  three.update(ledger.result_columns({}, scores.DEV_METRICS))
  with pytest.raises(ledger.LedgerError, match=r"cfimdb/accuracy") as e:
    ledger.append(directory, three, {"seed": 0})
  assert "\n" not in str(e.value)
  config = tmp_path / "three.py"
  config.write_text("from configs.default import get_config\n")
  argv = ["sweep", f"--configs={config}", f"--workdir={tmp_path / 'runs'}", f"--ledger={directory}"]
  assert cli.call(sweep.main, sweep.FLAGS, argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("sweep: error: run three has the tasks")
  assert "'sts/pearson']" in err and "'cfimdb/accuracy']" in err  # Both lists, named.
  assert not os.path.exists(tmp_path / "runs" / "three")  # Nothing trained.


@dataclasses.dataclass(frozen=True, eq=False)  # As sweep.Run: hashed by identity.
class _Run:
  name: str
  label: str
  workdir: str
  config: types.SimpleNamespace


def test_loss_plots_and_diagnose_follow_the_run_tasks(tmp_path):
  """A four-task run's metrics.jsonl: every-task rows with gradients, then one-task rows."""
  names = ("sst", "quora", "sts", "cfimdb")
  workdir = tmp_path / "run"
  workdir.mkdir()
  rows = [
    {
      "step": s,
      "loss": 1.0,
      "grad/cosine": np.eye(4).tolist(),
      **{f"grad/grad_norm/{t}": 1.0 + k for k, t in enumerate(names)},
      **{f"task_loss/{t}": 2.0 - 0.1 * s for t in names},
    }
    for s in (1, 2)
  ] + [{"step": 3, "loss": 0.5, "task": "cfimdb", "task_loss/cfimdb": 0.5}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert diagnose.task_names(rows[2:]) == ("cfimdb",)  # No fallback to the CS224N tasks.
  assert diagnose.task_names(rows) == names
  assert len(diagnose.summarize(rows[:2])["pairs"]) == 6
  run = _Run("four", "four", str(workdir), types.SimpleNamespace(task_order=names))
  paths = report._curves([run], str(tmp_path / "plots"))
  assert set(paths) == {f"{t} loss" for t in names}
  assert os.path.isfile(tmp_path / "plots" / "loss_cfimdb.png")
