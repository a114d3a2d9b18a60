"""mtl_jax.ledger through the sweep, with training replaced by a stub that writes the files
a finished run leaves (config.json, results.json): the ledger appends each finished run,
skips what it holds, retrains a changed configuration (and reports its old rows as not
used), reports reruns whose metrics moved; the report's numbers by hand; README tables."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys

import pytest

from mtl_jax import scores
from mtl_jax.study import ledger, publish, report, sweep
from mtl_jax.tools import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CS224N_COLUMNS = ledger.columns(scores.DEV_METRICS)


def sweep_main(args: list[str]) -> int:
  """The exit status of `python -m mtl_jax.sweep ARGS`, run in this process."""
  return cli.call(sweep.main, sweep.FLAGS, ["sweep", *args])


def ledger_main(args: list[str]) -> int:
  """The exit status of `python -m mtl_jax.ledger ARGS`, run in this process."""
  return cli.call(publish.main, publish.FLAGS, ["ledger", *args])


# Dev overall of the stub runs: sum 0.70/0.71/0.72, pcgrad +0.02/+0.03/+0.01 over seeds 0..2.
OVERALL = {
  ("sum", 0): 0.70,
  ("sum", 1): 0.71,
  ("sum", 2): 0.72,
  ("pcgrad", 0): 0.72,
  ("pcgrad", 1): 0.74,
  ("pcgrad", 2): 0.73,
}
CONFIG = """
from configs import default


def get_config():
  config = default.get_config()
  config.grad.method = {method!r}
  if config.grad.method == "pcgrad":  # As configs/methods/pcgrad.py: its order follows the seed.
    config.grad.kwargs.seed = config.get_ref("seed")
  return config
"""


def _configs(tmp_path) -> list[str]:
  paths = []
  for method in ("sum", "pcgrad"):
    paths.append(str(tmp_path / f"{method}.py"))
    with open(paths[-1], "w") as f:
      f.write(CONFIG.format(method=method))
  return paths


def _stub(launched: list, shift: dict | None = None):
  """sweep._launch that 'trains' instantly: OVERALL (+ shift[(name, seed)]) as dev overall."""

  def launch(run):
    launched.append(run.label)
    os.makedirs(run.workdir, exist_ok=True)
    overall = OVERALL[run.name, run.seed] + (shift or {}).get((run.name, run.seed), 0.0)
    with open(os.path.join(run.workdir, sweep.COMMITS), "a") as f:
      f.write("0123456789abcdef\n")
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
      f.write(run.config.to_json_best_effort())
    metrics = {
      "sst/accuracy": overall - 0.3,
      "quora/accuracy": overall + 0.1,
      "sts/pearson": 0.8,
      "overall": overall,
    }
    with open(os.path.join(run.workdir, "results.json"), "w") as f:
      json.dump(
        {
          "step": 300,
          "seconds": 61.0,
          "first_step": 0,
          "metrics": metrics,
          "bootstrap": {"intervals": {m: [v - 0.01, v + 0.02] for m, v in metrics.items()}},
        },
        f,
      )
    return None

  return launch


@pytest.fixture
def study(tmp_path, monkeypatch):
  """(configs, ledger dir, sweep(workdir, *args, shift=...) -> launched labels)."""
  configs, ledger_dir = _configs(tmp_path), str(tmp_path / "results" / "study")

  def run(workdir: str, *args: str, shift: dict | None = None) -> list[str]:
    launched = []
    monkeypatch.setattr(sweep, "_launch", _stub(launched, shift))
    # The stubs train nothing: a stand-in fingerprint (tests/study/test_fingerprint.py has
    # the real one), the step's part one per configuration, the data's one per seed.
    monkeypatch.setattr(
      sweep, "_fingerprint", lambda run: f"step-{run.name}/data-{run.seed}/keys-{run.seed}"
    )
    assert (
      sweep_main(
        [
          "--configs=" + ",".join(configs),
          "--workdir",
          str(tmp_path / workdir),
          "--seeds",
          "0,1,2",
          "--baseline",
          "sum",
          "--ledger",
          ledger_dir,
          *args,
        ]
      )
      == 0
    )
    return launched

  return configs, ledger_dir, run


def _report(ledger_dir: str) -> str:
  with open(os.path.join(ledger_dir, "report.md")) as f:
    return f.read()


def test_ledger_appends_each_run_and_the_report_has_the_statistics(study):
  configs, ledger_dir, run = study
  assert run("runs") == [f"{m}-seed={s}" for m in ("sum", "pcgrad") for s in range(3)]
  with open(os.path.join(ledger_dir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[: len(CS224N_COLUMNS)] == CS224N_COLUMNS
  assert [(r["name"], r["seed"], r["status"]) for r in rows] == [
    (m, str(s), "trained") for m in ("sum", "pcgrad") for s in range(3)
  ]
  first = rows[0]
  assert first["command"] == f"python main.py --config={configs[0]} --config.seed=0"
  assert first["commit"] == "0123456789abcdef" and first["steps"] == "300"
  assert float(first["overall"]) == 0.70 and float(first["overall_lo"]) == pytest.approx(0.69)
  with open(os.path.join(ledger_dir, first["config_json"])) as f:
    assert json.load(f)["seed"] == 0
  report = _report(ledger_dir)
  # sum: 0.70, 0.71, 0.72 -> 0.7100 ± 0.0100; pcgrad - sum: 0.02, 0.03, 0.01 -> mean 0.02,
  # half-width 4.3027 * 0.01 / sqrt(3) = 0.0248.
  assert (
    "| `sum` | 3 | 0,1,2 | 0.4100 ± 0.0100 | 0.8100 ± 0.0100 | 0.8000 ± 0.0000 | "
    "0.7100 ± 0.0100 | baseline |" in report
  )
  assert "| `pcgrad` | 3 | 0,1,2 | 0.4300 ± 0.0100 |" in report
  assert "| +0.0200 [-0.0048, +0.0448] | inconclusive | 0.0326 |" in report
  assert "+0.0200 [-0.0048, +0.0448]: inconclusive" in report  # Per metric.
  # The family: SST, Quora and overall move by 0.02, 0.03, 0.01 (t test p = 1 - t / sqrt(t² +
  # 2) with t = 2 sqrt 3: 0.0742); STS not at all (p 1, TOST p 0: equivalent). Holm: the three
  # smallest, 0.0742 x 4 = 0.297. TOST at ±0.005 of a mean 0.02: P(T2 < 2.598) = 0.939. The MDE
  # at sd 0.01 and n = 3: 3.264 sd (noncentral t). Seeds that detect 0.02 at sd 0.01: 5.
  assert "| `pcgrad` | overall | +0.0200 | 0.0100 | 0.074 | 0.297 | 0.939 (±0.005) |" in report
  assert "| `pcgrad` | STS Pearson | +0.0000 | 0.0000 | 1.000 | 1.000 | <0.001 (±0.01) |" in report
  assert "0.0326 | 5 |" in report
  assert "- Holm-adjusted: no difference detected (0 of 4)." in report
  assert "- Equivalent to the baseline (TOST, Holm): `pcgrad` STS Pearson." in report
  assert "Not computed: none of the 6 rows has stored dev predictions" in report
  assert "±0.0150 / 0.0100" in report  # Bootstrap half-width beside the seed sd.
  assert "`0123456789abcdef`: 6 rows" in report and "not used" not in report
  # Rows grouped by fingerprint: a step per configuration, batches/dropout per seed.
  assert "| `pcgrad` | `step-pcgrad` (3) |" in report and "| 1 | `data-1/keys-1` (2) |" in report
  assert "trained differently" not in report


def test_ledger_rows_are_skipped_and_a_changed_config_runs_again(study):
  _, ledger_dir, run = study
  run("runs")
  assert run("elsewhere") == []  # Another workdir, another sitting: the ledger has them all.
  with open(os.path.join(ledger_dir, "results.csv")) as f:
    assert len(list(csv.DictReader(f))) == 6
  assert len(run("runs_lr", "--set", "train.learning_rate=5e-4")) == 6  # Experiment key changed.
  rows = ledger.read(ledger_dir)
  assert len(rows) == 12
  classified = ledger.classify(ledger_dir, rows)
  assert classified["current"] == rows[6:]
  assert len(classified["stale"]) == 6
  assert "train.learning_rate=0.001 (now 0.0005)" in classified["stale"][0][1]
  assert "Rows not used" in _report(ledger_dir)


def test_a_rerun_with_other_metrics_is_reported(study):
  _, ledger_dir, run = study
  run("runs")
  assert len(run("rerun", "--rerun", shift={("pcgrad", 1): 0.004})) == 6
  rows = ledger.read(ledger_dir)
  assert [r["status"] for r in rows] == ["trained"] * 6 + ["rerun"] * 6
  report = _report(ledger_dir)
  assert (
    "`pcgrad` seed 1 (commit `0123456789ab`, first run `0123456789ab`; same fingerprint): "
    "**different metrics**: SST acc +0.0040, Quora acc +0.0040, overall +0.0040" in report
  )
  assert (
    "`sum` seed 0 (commit `0123456789ab`, first run `0123456789ab`; same fingerprint): "
    "identical metrics" in report
  )
  assert "+0.0200 [-0.0048, +0.0448]" in report  # The statistics use the first runs.


def test_bad_ledger_and_baseline_stop_the_sweep(tmp_path, capsys):
  configs = _configs(tmp_path)
  args = ["--configs=" + ",".join(configs), "--workdir", str(tmp_path / "runs"), "--seeds", "0,1"]
  assert sweep_main(args + ["--baseline", "mean"]) == 2
  assert (
    "--baseline mean: not one of the configurations ['sum', 'pcgrad']" in capsys.readouterr().err
  )
  assert sweep_main(args + ["--set", "seed=3"]) == 2
  assert "--set seed=... and --seeds both set the seed" in capsys.readouterr().err
  assert sweep_main(args[:-1] + ["0,x"]) == 2
  assert "expected integers" in capsys.readouterr().err
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "results.csv").write_text("a,b\n1,2\n")
  assert sweep_main(args + ["--ledger", str(tmp_path / "notes")]) == 2
  assert "not a ledger (missing columns" in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()


def test_report_on_a_damaged_ledger_is_one_line(tmp_path):
  """Run as `python -m mtl_jax.ledger` (its module is then __main__, and mtl_jax.study.report
  raises the LedgerError of mtl_jax.ledger)."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "results.csv").write_text("a,b\n1,2\n")
  cut = tmp_path / "cut"
  cut.mkdir()
  text = open(os.path.join(repo, "results", "methods", "results.csv")).read()
  (cut / "results.csv").write_text(text[: len(text) * 2 // 3])
  for directory, message in (
    (tmp_path / "notes", "not a ledger"),
    (cut, "a damaged or cut-off row"),
  ):
    out = subprocess.run(
      [sys.executable, "-m", "mtl_jax.ledger", "report", str(directory)],
      cwd=repo,
      capture_output=True,
      text=True,
      check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("ledger: error: ") and message in out.stderr


@pytest.mark.parametrize("damaged", ["study.json", "configs/sum-seed=1.json"])
def test_a_damaged_study_json_or_ledger_config_is_one_line_naming_it(study, capsys, damaged):
  """sweep --ledger, sweep --plan and `python -m mtl_jax.ledger report` on a ledger whose
  study.json or one of whose configs/*.json is cut short: one line naming the file."""
  configs, ledger_dir, run = study
  run("runs")
  capsys.readouterr()
  path = os.path.join(ledger_dir, damaged)
  text = open(path).read()
  with open(path, "w") as f:
    f.write(text[: len(text) // 2])
  args = ["--configs=" + ",".join(configs), "--workdir", os.path.dirname(ledger_dir) + "/w"]
  for extra in ([], ["--plan"]):
    assert sweep_main(args + ["--seeds", "0,1,2", "--ledger", ledger_dir, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep: error: {path}: not valid JSON") and len(err.splitlines()) == 1
  out = subprocess.run(
    [sys.executable, "-m", "mtl_jax.ledger", "report", ledger_dir],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.startswith(f"ledger: error: {path}: not valid JSON"), out.stderr
  assert "restore it from git" in out.stderr and len(out.stderr.splitlines()) == 1


def test_model_path_is_compared_by_its_last_two_components(tmp_path):
  config = sweep.load_config(_configs(tmp_path)[0], ())
  saved = json.loads(config.to_json_best_effort())
  saved["model"]["path"] = "/elsewhere/venv/site-packages/" + "/".join(
    config.model.path.split(os.sep)[-2:]
  )
  assert ledger.mismatches(saved, config) == []
  saved["model"]["path"] = "/models/bert-base-uncased"
  assert [k for k, _, _ in ledger.mismatches(saved, config)] == ["model.path"]


def test_commit_of_the_code():
  head = subprocess.run(
    ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True
  ).stdout.strip()
  assert ledger.code_commit(REPO).split("-")[0] == head
  assert ledger.same_code(head, head) is True
  assert ledger.same_code(head + "-dirty", head) is None


def test_readme_tables_are_generated_from_their_ledgers(study, tmp_path):
  _, ledger_dir, run = study
  run("runs")
  readme = tmp_path / "README.md"
  readme.write_text("# x\n\n<!-- results:study -->\nold numbers\n<!-- /results -->\nend\n")
  args = ["readme", "--readme", str(readme), "--results", os.path.dirname(ledger_dir)]
  assert ledger_main(args + ["--check"]) == 1
  assert ledger_main(args) == 0
  text = readme.read_text()
  assert "old numbers" not in text and text.endswith("<!-- /results -->\nend\n")
  assert "| `pcgrad` | 3 | 0,1,2 |" in text and "+0.0200 [-0.0048, +0.0448]" in text
  assert ledger_main(args + ["--check"]) == 0
  readme.write_text(text.replace("0.7100 ± 0.0100", "0.7200 ± 0.0100"))  # A hand edit.
  assert ledger_main(args + ["--check"]) == 1
  readme.write_text(text.replace("results:study", "results:nothing"))
  assert ledger_main(args) == 2


def test_repository_readme_matches_the_committed_ledgers():
  """Every `<!-- results:STUDY -->` table of README.md is what results/STUDY gives: run
  `python -m mtl_jax.ledger readme` after adding ledger rows."""
  assert ledger_main(["readme", "--check"]) == 0


def test_plan_shows_what_a_sweep_would_do_without_training(study, capsys):
  configs, ledger_dir, run = study
  run("runs")
  capsys.readouterr()
  args = [
    "--configs=" + ",".join(configs),
    "--workdir",
    "unused",
    "--seeds",
    "0,3",
    "--ledger",
    ledger_dir,
  ]
  assert sweep_main(args + ["--plan"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[:2] for line in lines] == [
    ["sum-seed=0", "in"],
    ["sum-seed=3", "train"],
    ["pcgrad-seed=0", "in"],
    ["pcgrad-seed=3", "train"],
  ]
  assert lines[1].endswith(f"python main.py --config={configs[0]} --config.seed=3")
  assert not os.path.exists("unused")


def test_the_methods_study_plan():
  """results/methods: the six configurations of configs/methods at seeds 0, 1, 2."""
  names = ["sum", "pcgrad", "cagrad", "nash_mtl", "mgda", "uncertainty"]
  runs = sweep.plan(
    [os.path.join(REPO, "configs", "methods", f"{n}.py") for n in names],
    [],
    "runs/methods",
    [0, 1, 2],
  )
  assert [r.label for r in runs] == [f"{n}-seed={s}" for n in names for s in range(3)]
  assert [(r.config.grad.method, r.config.train.loss_weighting) for r in runs[::3]] == [
    ("sum", "none"),
    ("pcgrad", "none"),
    ("cagrad", "none"),
    ("nash_mtl", "none"),
    ("mgda", "none"),
    ("sum", "uncertainty"),
  ]
  assert [r.config.grad.kwargs.seed for r in runs[3:6]] == [0, 1, 2]  # PCGrad's task order.
  assert (
    runs[4].ledger_command() == "python main.py --config=configs/methods/pcgrad.py --config.seed=1"
  )
  with open(os.path.join(REPO, "results", "methods", ledger.STUDY_JSON)) as f:
    study = json.load(f)
  assert study["baseline"] == "sum"
  # Its command is today's command line: the same runs, in the same order.
  command = shlex.split(study["command"])
  assert command[:3] == ["python", "-m", "mtl_jax.sweep"]
  cli.parse(sweep.main, sweep.FLAGS, ["sweep", *command[3:]])
  assert sweep.FLAGS.configs == [",".join(r.config_path[len(REPO) + 1 :] for r in runs[::3])]
  assert (sweep.FLAGS.workdir, sweep.FLAGS.seeds, sweep.FLAGS.ledger) == (
    "runs/methods",
    "0,1,2",
    "results/methods",
  )


def test_the_recorded_sweep_command_carries_the_study_on(study, capsys):
  """study.json's command, run again, finds every run in the ledger."""
  configs, ledger_dir, run = study
  run("runs")
  command = shlex.split(ledger.read_study(ledger_dir)["command"])
  assert command[:4] == ["python", "-m", "mtl_jax.sweep", "--configs=" + ",".join(configs)]
  capsys.readouterr()
  assert sweep_main([*command[3:], "--plan"]) == 0
  assert [line.split()[1:3] for line in capsys.readouterr().out.splitlines()] == [["in", "the"]] * 6


def test_readme_prose_on_the_methods_study_matches_its_ledger():
  """The sentences of README's Results section that state ledger numbers outside the
  generated table: gradient diagnostics and the rerun."""
  directory = os.path.join(REPO, "results", "methods")
  classified = ledger.classify(directory, ledger.read(directory))
  rows = classified["current"]
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  assert "mean pairwise cosine within\n±0.01, conflict on about half the steps" in readme
  assert all(abs(r["grad_cosine"]) <= 0.01 for r in rows)
  assert all(0.4 <= r["grad_conflict_rate"] <= 0.6 for r in rows)
  assert "PCGrad removes about 6% of their norm" in readme
  removed = [r["grad_removed"] for r in rows if r["name"] == "pcgrad"]
  assert len(removed) == 3 and round(100 * sum(removed) / 3) == 6  # 5.2%, 5.5%, 6.3%.
  assert "a rerun of `sum` seed 0 from a later commit gave the same\nmetrics exactly" in readme
  [(rerun, original)] = classified["reruns"]
  assert (rerun["name"], rerun["seed"]) == ("sum", 0) and rerun["commit"] != original["commit"]
  assert all(rerun[c] == original[c] for c in ledger.metric_columns(scores.DEV_METRICS).values())


def test_an_older_ledger_gains_the_new_columns_when_a_row_is_appended(tmp_path):
  old = [c for c in CS224N_COLUMNS if c not in ("fingerprint", "predictions")]
  with open(tmp_path / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, old)
    writer.writeheader()
    writer.writerow(
      {
        **dict.fromkeys(old, ""),
        "name": "sum",
        "seed": "0",
        "status": "trained",
        "overall": "0.7",
        "config_json": "configs/sum-seed=0.json",
      }
    )
  assert ledger.read(str(tmp_path))[0].get("fingerprint") is None  # Read as before.
  row = {"name": "sum", "seed": 1, "status": "trained", "overall": 0.71, "fingerprint": "s/b/d"}
  row.update(dict.fromkeys(["sst_acc", "quora_acc", "sts_pearson"]))  # Its tasks' columns.
  ledger.append(str(tmp_path), row, {"seed": 1})
  with open(tmp_path / "results.csv", newline="") as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  assert reader.fieldnames == CS224N_COLUMNS
  assert [(r["seed"], r["overall"], r["fingerprint"]) for r in rows] == [
    ("0", "0.7", ""),
    ("1", "0.71", "s/b/d"),
  ]
  study = ledger.read_study(str(tmp_path))
  assert study["equivalence_margin"] == ledger.default_margins(scores.DEV_METRICS)
  (tmp_path / "study.json").write_text('{"baseline": "sum", "equivalence_margin": 0.002}')
  ledger.write_study(str(tmp_path), "sum", "python -m mtl_jax.sweep ...")  # Keeps the margin.
  assert ledger.read_study(str(tmp_path))["equivalence_margin"]["overall"] == 0.002


def test_rows_trained_differently_are_flagged_by_their_fingerprints(study, monkeypatch):
  _, ledger_dir, run = study
  run("runs")
  rows = ledger.read(ledger_dir)
  rows[4]["fingerprint"] = "step-other/data-1/keys-1"  # pcgrad seed 1: another train step.
  rows[0]["fingerprint"] = ""  # sum seed 0: from before fingerprints.
  monkeypatch.setattr(ledger, "read", lambda directory: rows)
  text = "\n".join(report.provenance(ledger_dir, ledger.classify(ledger_dir, rows)))
  assert "| `pcgrad` | `step-pcgrad` (2), `step-other` (1) |" in text
  assert "| `sum` | unknown (1), `step-sum` (2) |" in text
  assert "| 0 | unknown (1), `data-0/keys-0` (1) |" in text
  assert "**Rows of pcgrad were trained differently**" in text
