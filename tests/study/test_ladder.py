"""A study's ladder (mtl_jax.study.ladder): each rung against the rung it builds on, in the
report and the README, from a ledger written here by hand (no training)."""

import json
import os

import numpy as np
import pytest

from mtl_jax.study import ladder, ledger, publish, report

# Toy dev sets: 4 SST sentences, 3 Quora pairs, 3 STS pairs.
LABELS = {"sst": [0, 1, 2, 3], "quora": [0, 1, 0], "sts": [0.0, 2.0, 5.0]}
# Dev predictions per rung: r1 gets one more SST sentence right than r0; r2 one more Quora
# pair than r1; r3 has no stored predictions.
PREDICTIONS = {
  "r0": {"sst": [0, 0, 0, 0], "quora": [0, 0, 0], "sts": [1.0, 2.0, 4.0]},
  "r1": {"sst": [0, 1, 0, 0], "quora": [0, 0, 0], "sts": [1.0, 2.0, 4.0]},
  "r2": {"sst": [0, 1, 0, 0], "quora": [0, 1, 0], "sts": [1.0, 2.0, 4.0]},
}


def _pearson(a, b) -> float:
  return float(np.corrcoef(a, b)[0, 1])


def _metrics(p: dict) -> dict:
  """The ledger's metric columns, computed here from the toy predictions."""
  sst = np.mean(np.equal(p["sst"], LABELS["sst"]))
  quora = np.mean(np.equal(p["quora"], LABELS["quora"]))
  sts = _pearson(p["sts"], LABELS["sts"])
  return {
    "sst_acc": sst,
    "quora_acc": quora,
    "sts_pearson": sts,
    "overall": (sst + quora + (sts + 1) / 2) / 3,
  }


def _ids(task: str) -> np.ndarray:
  return np.asarray(f"sha-of-{task}-ids")


def _write_ledger(directory, ladder_json, names=("r0", "r1", "r2", "r3")) -> None:
  os.makedirs(os.path.join(directory, ledger.PREDICTIONS))
  np.savez(
    os.path.join(directory, ledger.PREDICTIONS, ledger.LABELS_NPZ),
    **{t: np.asarray(v) for t, v in LABELS.items()},
    **{f"{t}_ids": _ids(t) for t in LABELS},
  )
  for name in names:
    preds = PREDICTIONS.get(name)
    rel = ""
    if preds is not None:
      rel = os.path.join(ledger.PREDICTIONS, f"{name}-seed=0.npz")
      np.savez(
        os.path.join(directory, rel),
        **{t: np.asarray(v) for t, v in preds.items()},
        **{f"{t}_ids": _ids(t) for t in LABELS},
      )
    metrics = _metrics(preds or PREDICTIONS["r1"])
    if preds is None:  # r3: what its (unstored) predictions scored.
      metrics = {**metrics, "sts_pearson": 0.9, "overall": metrics["overall"] + 0.01}
    row = {"name": name, "seed": 0, "status": "trained", "commit": "0" * 40, "predictions": rel}
    ledger.append(directory, {**row, **metrics, "steps": 300}, {"seed": 0, "name": name})
  with open(os.path.join(directory, ledger.STUDY_JSON), "w") as f:
    json.dump({"baseline": "r0", "command": "sweep", "ladder": ladder_json}, f)


@pytest.fixture
def study(tmp_path):
  directory = str(tmp_path / "results" / "recipe")
  _write_ledger(directory, {"r1": "r0", "r2": "r1", "r3": "r1", "r4": "r1"})
  return directory


def test_each_rung_is_read_against_its_parent(study):
  rows = ledger.read(study)
  got = {s["rung"]: s for s in ladder.steps(study, rows, ledger.read_study(study)["ladder"])}
  assert list(got) == ["r1", "r2", "r3"]  # r4 has no run.
  assert {s["parent"] for s in got.values()} == {"r0", "r1"}
  # r1 − r0: one more of 4 SST sentences right; Quora and STS the same.
  r1 = got["r1"]
  assert r1["diff"]["sst_acc"] == pytest.approx(0.25) and r1["diff"]["quora_acc"] == 0
  assert r1["bootstrap"]["sst_acc"]["mean"] == pytest.approx(0.25)
  assert r1["bootstrap"]["overall"]["mean"] == pytest.approx(0.25 / 3)
  # One sentence differs: a resample's difference is (its draws of that sentence) / 4, so
  # the interval is inside [0, 1] and holds 0.25; the other tasks' intervals are [0, 0].
  low, high = r1["bootstrap"]["sst_acc"]["low"], r1["bootstrap"]["sst_acc"]["high"]
  assert 0 <= low <= 0.25 <= high <= 1
  assert r1["bootstrap"]["quora_acc"]["low"] == r1["bootstrap"]["quora_acc"]["high"] == 0
  # r2 − r1: one more of 3 Quora pairs right.
  assert got["r2"]["bootstrap"]["quora_acc"]["mean"] == pytest.approx(1 / 3)
  assert got["r2"]["bootstrap"]["sst_acc"]["mean"] == 0
  # r3 has no stored predictions: the difference of the ledger's metrics, no interval.
  assert got["r3"]["bootstrap"] is None
  assert got["r3"]["diff"]["sts_pearson"] == pytest.approx(
    0.9 - _metrics(PREDICTIONS["r1"])["sts_pearson"]
  )


def test_the_report_and_readme_show_the_ladder(study, tmp_path):
  report.write_ledger_report(study)
  text = open(os.path.join(study, "report.md")).read()
  section = text.split("## Ladder")[1].split("\n## ")[0]
  assert "| `r1` | `r0` | 0 | +0.2500 [" in section
  assert "| `r3` | `r1` | 0 | +0.0000 | +0.0000 |" in section  # No interval without predictions.
  assert "Not run yet: `r4`." in section
  # A study with a ladder: its README table is the ladder; a marker may name a path below
  # results/, never above it.
  readme = "<!-- results:recipe -->\nold\n<!-- /results -->\n"
  out = publish.update_readme(readme, str(tmp_path / "results"))
  assert "| rung | builds on | seeds |" in out and "| `r2` | `r1` | 0 |" in out
  os.rename(study, str(tmp_path / "results" / "final"))
  os.makedirs(study)
  os.rename(str(tmp_path / "results" / "final"), os.path.join(study, "final"))
  assert "| `r2` | `r1` |" in publish.update_readme(
    readme.replace("recipe", "recipe/final"), str(tmp_path / "results")
  )
  with pytest.raises(ledger.LedgerError, match="below"):
    publish.update_readme(readme.replace("recipe", "../recipe"), str(tmp_path / "results"))


def test_a_study_without_a_ladder_reports_none(tmp_path):
  directory = str(tmp_path / "plain")
  _write_ledger(directory, {})
  assert ledger.read_study(directory)["ladder"] == {}
  report.write_ledger_report(directory)
  assert "## Ladder" not in open(os.path.join(directory, "report.md")).read()


@pytest.mark.parametrize(
  "bad, message",
  [
    (["r1", "r0"], "must map each rung"),
    ({"r1": 0}, "must map each rung"),
    ({"r1": "r1"}, "cycle: r1 -> r1"),
    ({"r1": "r2", "r2": "r3", "r3": "r2"}, "cycle: r1 -> r2 -> r3 -> r2"),
  ],
)
def test_a_bad_ladder_is_one_error_naming_study_json(tmp_path, bad, message):
  directory = str(tmp_path / "bad")
  _write_ledger(directory, bad, names=("r0",))
  with pytest.raises(ledger.LedgerError, match=message) as e:
    ledger.read_study(directory)
  assert str(e.value).startswith(os.path.join(directory, ledger.STUDY_JSON))
