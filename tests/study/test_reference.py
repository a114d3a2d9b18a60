"""study.json's reference and machine: each configuration's mean over seeds set against
published numbers (quoted, never ledger rows), in the README's findings and report.md,
from a ledger written here by hand (no training)."""

import json
import os

import pytest

from mtl_jax.study import ledger, publish, report

# Dev metrics per (configuration, seed); the intervals below are worked out by hand.
RUNS = {
  "best": {
    10: (0.45, 0.85, 0.86, 0.74),
    11: (0.46, 0.86, 0.87, 0.75),
    12: (0.47, 0.87, 0.88, 0.76),
  },
  "base": {10: (0.42, 0.79, 0.86, 0.71), 11: (0.43, 0.80, 0.86, 0.72)},
  "single": {10: (0.40, 0.70, 0.80, 0.66)},
}
COLUMNS = ("sst_acc", "quora_acc", "sts_pearson", "overall")
REFERENCE = {
  "label": "report 004 (BERT-base)",
  "values": {"sst_acc": 0.496, "sts_pearson": 0.80, "overall": 0.7405},
}


def _write(directory: str, study: dict) -> None:
  for name, seeds in RUNS.items():
    for seed, values in seeds.items():
      row = {"name": name, "seed": seed, "status": "trained", "commit": "0" * 40}
      row["seconds"] = {"best": 60 * (40 + seed), "base": 780}.get(name)  # single: unknown
      ledger.append(directory, {**row, **dict(zip(COLUMNS, values)), "steps": 800}, {"seed": seed})
  with open(os.path.join(directory, ledger.STUDY_JSON), "w") as f:
    json.dump({"baseline": "base", "command": "sweep", **study}, f)


def test_each_mean_is_set_against_the_reference(tmp_path):
  directory = str(tmp_path / "results" / "final")
  _write(directory, {"reference": REFERENCE, "machine": "AMD EPYC (AVX2), 2 cores"})
  lines = report.findings(ledger.read(directory), "base", None, directory)
  best = next(x for x in lines if x.startswith("- `best`"))
  # n = 3, sd 0.01 for every column: half-width t(0.975, 2) · 0.01 / √3 = 0.024841.
  assert "against report 004 (BERT-base)" in best and "(n = 3;" in best
  assert "SST acc 0.4600 [0.4352, 0.4848] vs 0.496 (above the interval)" in best
  assert "STS Pearson 0.8700 [0.8452, 0.8948] vs 0.8 (below the interval)" in best
  assert "overall 0.7500 [0.7252, 0.7748] vs 0.7405 (inside the interval)" in best
  assert "Quora" not in best  # Only the columns the reference gives.
  # n = 2: sd 0.00707, half-width t(0.975, 1) · sd / √2 = 12.706 · 0.005 = 0.06353.
  base = next(x for x in lines if x.startswith("- `base`"))
  assert "overall 0.7150 [0.6515, 0.7785] vs 0.7405 (inside the interval)" in base
  single = next(x for x in lines if x.startswith("- `single`"))
  assert "(n = 1; one seed, no interval)" in single and "overall 0.6600 vs 0.7405" in single
  # best − base is +0.03 at both paired seeds: no spread, so no MDE, and already detected.
  assert "is not defined (no spread); the largest mean gain, `best` +0.0300, is detected" in (
    "\n".join(lines)
  )
  # Wall time per configuration, in minutes (a range over seeds).
  assert "run, in minutes: `best` 50–52, `base` 13; a resumed" in lines[0]
  assert "- Wall times measured on: AMD EPYC (AVX2), 2 cores (study.json)." in lines
  # The same sentences reach the README table and report.md.
  readme = publish.update_readme(
    "<!-- results:final -->\n<!-- /results -->\n", str(tmp_path / "results")
  )
  assert best in readme
  report.write_ledger_report(directory)
  assert best in open(os.path.join(directory, "report.md")).read()


def test_without_a_reference_nothing_is_set_against_it(tmp_path):
  directory = str(tmp_path / "plain")
  _write(directory, {})
  study = ledger.read_study(directory)
  assert study["reference"] is None and study["machine"] is None
  lines = report.findings(ledger.read(directory), "base", None, directory)
  assert not any("against" in x or "measured on" in x for x in lines)


def test_rows_timed_on_several_machines_are_told_apart(tmp_path):
  """Seed 12 of `best` names its CPU in its row; the other rows predate the column and
  take study.json's: the wall times are given per machine, tagged A and B."""
  directory = str(tmp_path / "mixed")
  zen4 = "AMD EPYC (family 25 model 17; AVX-512, AVX2), 2 cores"
  for name, seeds in RUNS.items():
    for seed, values in seeds.items():
      row = {"name": name, "seed": seed, "status": "trained", "commit": "0" * 40, "steps": 800}
      row["seconds"] = {"best": 60 * (40 + seed), "base": 780}.get(name)
      row["machine"] = zen4 if (name, seed) == ("best", 12) else None
      ledger.append(directory, {**row, **dict(zip(COLUMNS, values))}, {"seed": seed})
  with open(os.path.join(directory, ledger.STUDY_JSON), "w") as f:
    json.dump({"baseline": "base", "command": "sweep", "machine": "AMD EPYC (AVX2), 2 cores"}, f)
  rows = ledger.read(directory)
  assert [r["machine"] for r in rows if r["name"] == "best"] == ["", "", zen4]
  lines = report.findings(rows, "base", None, directory)
  assert "in minutes: `best` 50–51 on A, 52 on B, `base` 13 on A; a resumed" in lines[0]
  assert (
    f"- Wall times measured on: A = AMD EPYC (AVX2), 2 cores; B = {zen4} (the rows' machine "
    "column; study.json for rows without one)."
  ) in lines
  runs = open(report.write_ledger_report(directory)).read().split("## Runs")[1]
  assert runs.count(" s (A) |") == 4 and runs.count(" s (B) |") == 1  # single: no time.
  # Without study.json's machine the older rows name none, and say so.
  with open(os.path.join(directory, ledger.STUDY_JSON), "w") as f:
    json.dump({"baseline": "base", "command": "sweep"}, f)
  lines = report.findings(ledger.read(directory), "base", None, directory)
  assert "`best` 50–51 on an unnamed machine, 52 on " + zen4 in lines[0]
  assert (
    f"- Wall times measured on: {zen4} (the rows' machine column; 4 rows name no machine)."
    in (lines)
  )


def test_a_run_results_json_machine_reaches_its_ledger_row():
  results = {"step": 800, "seconds": 3000.0, "machine": "Some CPU (AVX2), 2 cores"}
  row = ledger.result_columns(results, ("sst/accuracy",))
  assert row["machine"] == "Some CPU (AVX2), 2 cores" and row["seconds"] == 3000.0
  assert "machine" in ledger.columns(("sst/accuracy",))


@pytest.mark.parametrize(
  "study, message",
  [
    ({"reference": [0.7405]}, "reference must be"),
    ({"reference": {"values": {"overall": 0.7}}}, "reference must be"),
    ({"reference": {"label": "x", "values": {}}}, "reference must be"),
    ({"reference": {"label": "x", "values": {"overall": "high"}}}, "reference must be"),
    ({"reference": {"label": "x", "values": {"cfimdb_acc": 0.9}}}, r"unknown columns \['cfimdb"),
    ({"machine": 3}, "machine must be a string"),
  ],
)
def test_a_bad_reference_is_one_error_naming_study_json(tmp_path, study, message):
  directory = str(tmp_path / "bad")
  _write(directory, study)
  with pytest.raises(ledger.LedgerError, match=message) as e:
    ledger.read_study(directory)
  assert str(e.value).startswith(os.path.join(directory, ledger.STUDY_JSON))
