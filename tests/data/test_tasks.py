"""mtl_jax.tasks: the task table, and the modules that read it."""

from __future__ import annotations

import ast
import pathlib

import pytest

from mtl_jax import prediction_files as predictions
from mtl_jax import scores as metrics
from mtl_jax import tasks
from mtl_jax.data import files

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_three_tasks_in_task_axis_order():
  assert tasks.TASKS == ("sst", "quora", "sts") == tuple(tasks.SPECS)
  assert [tasks.index(t) for t in tasks.TASKS] == [0, 1, 2]
  assert [tasks.get(t).is_pair for t in tasks.TASKS] == [False, True, True]
  assert all(tasks.get(t).output == t for t in tasks.TASKS)


def test_unknown_task_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown task 'mnli'.*'sst', 'quora', 'sts'"):
    tasks.get("mnli")
  with pytest.raises(ValueError, match="unknown task"):
    tasks.index("para")


def test_a_bad_table_entry_is_refused():
  sst = tasks.get("sst")
  with pytest.raises(ValueError, match=r"tasks\.sst\.loss: 'hinge' is not one for label='class'"):
    type(sst)(**{**{f: getattr(sst, f) for f in sst.__dataclass_fields__}, "loss": "hinge"})


def test_modules_read_the_table():
  assert files.FILES[("quora", "dev")] == "quora-dev.csv" and ("quora", "test") not in files.FILES
  assert metrics.TASK_METRIC == {"sst": "accuracy", "quora": "accuracy", "sts": "pearson"}
  assert metrics.DEV_METRICS == ("sst/accuracy", "quora/accuracy", "sts/pearson")
  assert predictions.output_filename("quora", "dev") == "para-dev-output.csv"
  assert predictions.HEADERS["sts"] == "Predicted_Similiary"


def _imports(path: pathlib.Path) -> set[str]:
  """The modules a file imports (`from a import b`: a and a.b), at any depth."""
  out = set()
  for n in ast.walk(ast.parse(path.read_text())):
    if isinstance(n, ast.Import):
      out.update(a.name for a in n.names)
    elif isinstance(n, ast.ImportFrom) and n.module:
      out.add(n.module)
      out.update(f"{n.module}.{a.name}" for a in n.names)
  return out


def test_tasks_imports_nothing_from_mtl_jax():
  """Low level, so that every module can import it."""
  assert not [m for m in _imports(ROOT / "mtl_jax" / "tasks.py") if m.startswith("mtl_jax")]


def test_dependency_arrows_point_one_way():
  low = [
    p for d in ("config", "data", "models", "grad") for p in (ROOT / "mtl_jax" / d).glob("*.py")
  ]
  for path in low:  # config/, data/, models/, grad/: none imports the train step.
    assert "mtl_jax.step" not in _imports(path), path
  assert not [m for m in _imports(ROOT / "mtl_jax" / "step.py") if m.startswith("mtl_jax.data")]
