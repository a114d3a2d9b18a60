"""mtl_jax.diagnose: summary numbers on a synthetic metrics.jsonl, plots, errors, the CLI,
and the --from_checkpoint mode on a 2-step tiny-BERT run."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mtl_jax import tasks
from mtl_jax.config import run_spec
from mtl_jax.data.files import default_data_dir
from mtl_jax.models import hf_io
from mtl_jax.tools import cli, diagnose

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Cosines per logged step for the pairs (sst, quora), (sst, sts), (quora, sts).
COSINES = [(0.5, 0.1, -0.3), (-0.5, 0.1, -0.3), (0.2, 0.1, -0.3), (-0.2, 0.1, -0.3)]


def _cos_matrix(c01: float, c02: float, c12: float) -> list:
  return [[1.0, c01, c02], [c01, 1.0, c12], [c02, c12, 1.0]]


def _grad_row(step: int, cos: tuple, removed: bool = True) -> dict:
  norms = {"sst": 0.2 * step, "quora": 0.1, "sts": 1.0}
  row = {
    "step": step,
    "grad/cosine": _cos_matrix(*cos),
    "loss": 3.0 / step,
    **{f"grad/grad_norm/{t}": n for t, n in norms.items()},
    **{f"task_loss/{t}": 1.0 / step for t in norms},
  }
  if removed:  # sst loses 10% of its norm, quora 50%, sts nothing.
    row.update(
      {
        "method/removed_norm/sst": 0.02 * step,
        "method/removed_norm/quora": 0.05,
        "method/removed_norm/sts": 0.0,
        "method/num_projections/sst": 1.0,
        "method/num_projections/quora": 2.0,
        "method/num_projections/sts": 0.0,
      }
    )
  return row


def _write_metrics(workdir, rows: list[dict], extra_lines: str = "") -> str:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + extra_lines)
  return str(workdir)


DEV = {
  "step": 4,
  "dev/sst/accuracy": 0.4,
  "dev/quora/accuracy": 0.7,
  "dev/sts/pearson": 0.8,
  "dev/overall": 0.6,
}


@pytest.fixture
def workdir(tmp_path) -> str:
  rows = [_grad_row(s + 1, c) for s, c in enumerate(COSINES)]
  return _write_metrics(tmp_path / "run", rows + [DEV])


def test_summary_numbers(workdir):
  s = diagnose.summarize(*diagnose.read_metrics(workdir))
  assert (s["num_rows"], s["first_step"], s["last_step"]) == (4, 1, 4)
  p = s["pairs"]
  assert list(p) == ["sst-quora", "sst-sts", "quora-sts"]
  assert p["sst-quora"]["mean_cosine"] == pytest.approx(0.0, abs=1e-12)
  assert p["sst-quora"]["mean_abs_cosine"] == pytest.approx(0.35)
  assert p["sst-quora"]["conflict_rate"] == pytest.approx(0.5)
  assert p["sst-sts"] == pytest.approx(
    {"mean_cosine": 0.1, "mean_abs_cosine": 0.1, "conflict_rate": 0.0}
  )
  assert p["quora-sts"] == pytest.approx(
    {"mean_cosine": -0.3, "mean_abs_cosine": 0.3, "conflict_rate": 1.0}
  )
  t = s["tasks"]
  assert t["sst"]["mean_grad_norm"] == pytest.approx(0.2 * 2.5)
  assert t["sst"]["mean_removed_fraction"] == pytest.approx(0.1)
  assert t["quora"]["mean_removed_fraction"] == pytest.approx(0.5)
  assert t["sts"]["mean_removed_fraction"] == pytest.approx(0.0)
  assert t["quora"]["mean_num_projections"] == pytest.approx(2.0)
  assert t["sts"]["final_loss"] == pytest.approx(0.25)
  assert s["final_dev"] == {k: v for k, v in DEV.items() if k != "step"}
  text = diagnose.format_summary(s)
  assert "quora-sts" in text and "1.0000" in text and "dev/overall" in text


def test_resumed_run_repeats_and_a_cut_last_line(tmp_path):
  # A resumed run logs steps 3-4 again; the last copy wins. A killed run leaves half a line.
  rows = [_grad_row(s + 1, c) for s, c in enumerate(COSINES)]
  rows.append(_grad_row(4, (0.9, 0.9, 0.9)))
  s = diagnose.summarize(*diagnose.read_metrics(_write_metrics(tmp_path, rows, '{"step": 5, "gr')))
  assert s["num_rows"] == 4
  assert s["pairs"]["quora-sts"]["conflict_rate"] == pytest.approx(0.75)
  assert s["final_dev"] == {}


def test_without_method_stats_there_is_no_removed_fraction(tmp_path):
  rows = [_grad_row(s + 1, c, removed=False) for s, c in enumerate(COSINES)]
  s = diagnose.run(_write_metrics(tmp_path / "run", rows), str(tmp_path / "out"))
  assert s["tasks"]["sst"]["mean_removed_fraction"] is None
  assert not os.path.exists(tmp_path / "out" / "removed_fraction.png")


def test_run_writes_valid_pngs_and_summary_json(workdir, capsys):
  summary = diagnose.run(workdir)
  out_dir = os.path.join(workdir, "diagnostics")
  expected = {
    "cosine.png",
    "grad_norm.png",
    "conflict_rate.png",
    "removed_fraction.png",
    "method_removed_norm.png",
    "method_num_projections.png",
    "loss.png",
    "dev.png",
  }
  assert set(os.listdir(out_dir)) == expected | {"summary.json"}
  for name in expected:
    with open(os.path.join(out_dir, name), "rb") as f:
      data = f.read()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), name
  with open(os.path.join(out_dir, "summary.json")) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  printed = capsys.readouterr().out
  assert os.path.join(out_dir, "cosine.png") in printed and "conflict rate" in printed


def test_rolling_conflict_rate():
  r = diagnose._rolling(np.array([1.0, 0.0, 1.0, 1.0, 0.0]), 2)
  np.testing.assert_allclose(r, [1.0, 0.5, 0.5, 1.0, 0.5])


@pytest.mark.parametrize(
  "setup, match",
  [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "metrics.jsonl not found"),
    (lambda p: _write_metrics(p, []), "no gradient rows"),
    (lambda p: _write_metrics(p, [{"step": 5, "loss": 1.0}, DEV]), "no gradient rows"),
  ],
)
def test_missing_or_empty_workdir_errors(tmp_path, setup, match):
  path = tmp_path / "run"
  setup(path)
  with pytest.raises(diagnose.DiagnoseError, match=match):
    diagnose.read_metrics(str(path))


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "mtl_jax.diagnose", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_error_is_one_line_with_exit_code_2(tmp_path):
  proc = _cli("--workdir", str(tmp_path / "nope"))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    f"diagnose: error: workdir {tmp_path / 'nope'} not found"
  ]


def test_cli_output_flag(workdir, tmp_path):
  proc = _cli("--workdir", workdir, "--output", str(tmp_path / "plots"))
  assert proc.returncode == 0, proc.stderr
  assert os.path.isfile(tmp_path / "plots" / "summary.json")
  assert "sst-quora" in proc.stdout


def _tiny_run(model_dir: str, workdir: str, step: int) -> str:
  """A workdir as training leaves it (config.json, a checkpoint at `step`), minus the
  training itself: the checkpoint is the initial state, which saves ~15 s of compiles."""
  import jax.numpy as jnp
  from conftest import tiny_config

  from mtl_jax import train
  from mtl_jax.runtime.checkpoint import Checkpointer

  config = tiny_config(model_dir, length_buckets=(32,))  # One batch shape: one compile.
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  _, state, _, _ = train.init_state(run_spec.build(config))
  ckpt = Checkpointer(workdir, 1, 1)
  ckpt.save(step, state._replace(step=jnp.asarray(step, jnp.int32)), {"step": step}, force=True)
  ckpt.close()
  return workdir


@pytest.mark.skipif(not os.path.isdir(default_data_dir()), reason="no data")
def test_checkpoint_mode_on_a_tiny_run(tiny_bert_dir, tmp_path, monkeypatch):
  run_dir = _tiny_run(tiny_bert_dir, str(tmp_path / "run"), step=2)

  rows = diagnose.checkpoint_rows(run_dir, 2)
  assert [r["step"] for r in rows] == [2, 3]  # The batches after the checkpoint's step.
  for r in rows:
    cos = np.asarray(r["grad/cosine"])
    assert cos.shape == (3, 3)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-4)
    np.testing.assert_allclose(cos, cos.T, atol=1e-6)
    assert np.all(np.abs(cos) <= 1.0 + 1e-5)
    assert all(r[f"grad/grad_norm/{t}"] > 0 for t in tasks.TASKS)
    assert all(np.isfinite(r[f"task_loss/{t}"]) for t in tasks.TASKS)
    assert "method/removed_norm/sst" in r  # tiny_config uses pcgrad.
  monkeypatch.setattr(diagnose, "checkpoint_rows", lambda workdir, n: rows)  # No recompile.
  s = diagnose.run(run_dir, from_checkpoint=True, batches=2)
  with open(os.path.join(run_dir, "diagnostics", "checkpoint_summary.json")) as f:
    assert json.load(f)["num_rows"] == 2
  assert all(0 <= v["conflict_rate"] <= 1 for v in s["pairs"].values())
  assert all(v["mean_grad_norm"] > 0 for v in s["tasks"].values())


@pytest.mark.skipif(not os.path.isdir(default_data_dir()), reason="no data")
def test_checkpoint_mode_measures_the_step_training_took(tiny_bert_dir, tmp_path, monkeypatch):
  """On a run whose epochs are capped (train.epoch_examples), --from_checkpoint at step 2
  draws the batch training drew at step 2 and takes the trainer's step with step 2's
  dropout keys (dropout is on: adapter and heads), so it measures the losses and gradient
  cosines training logged for step 2."""
  from conftest import read_metrics, tiny_config

  from mtl_jax import train
  from mtl_jax.data import batching, schedules

  config = tiny_config(
    tiny_bert_dir, steps=3, checkpoint_every=1, keep_checkpoints=3, length_buckets=(32,)
  )
  config.train.epoch_examples.sst = 12  # Of 40: step 2 is in SST's second epoch.
  assert config.adapter.dropout > 0 and config.model.head_dropout > 0
  drawn = collections.defaultdict(list)  # step -> the batches drawn for it, in order.
  real = schedules.train_batch

  def recording(datasets, step, *args):
    drawn[step].append(real(datasets, step, *args))
    return drawn[step][-1]

  monkeypatch.setattr(schedules, "train_batch", recording)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))  # Latest: step 2, as mid-run.
  trained = drawn[2][-1]  # The last draw: earlier ones chose the packing slots.
  drawn.clear()

  (row,) = diagnose.checkpoint_rows(workdir, 1)
  assert row["step"] == 2
  measured = drawn[2][-1]
  assert trained.keys() == measured.keys()
  for k in trained:
    np.testing.assert_array_equal(measured[k], trained[k], err_msg=k)
  t = config.train  # What diagnose drew before it used the run's schedule:
  data = train.load_data(run_spec.build(config), hf_io.load_tokenizer(tiny_bert_dir))["train"]
  uncapped = batching.train_batch(
    data, 2, t.seqs_per_task, config.seed, tuple(t.length_buckets), t.length_grouping
  )
  assert not np.array_equal(uncapped["input_ids"][0], trained["input_ids"][0])

  logged = next(r for r in read_metrics(workdir) if r["step"] == 3 and "loss" in r)  # Step 2 done.
  for t in tasks.TASKS:
    assert row[f"task_loss/{t}"] == pytest.approx(logged[f"task_loss/{t}"], rel=1e-5, abs=1e-6)
    assert row[f"grad/grad_norm/{t}"] == pytest.approx(logged[f"grad/grad_norm/{t}"], rel=1e-4)
  np.testing.assert_allclose(row["grad/cosine"], logged["grad/cosine"], atol=1e-5)


@pytest.mark.skipif(not os.path.isdir(default_data_dir()), reason="no data")
def test_checkpoint_mode_on_a_run_whose_batches_exceed_its_data_is_one_line(
  tiny_bert_dir, tmp_path, capsys
):
  """A run saved before a batch larger than a task's data was refused (train.seqs_per_task
  64 on 40 rows): --from_checkpoint says so in one line, not a DataError traceback."""
  run_dir = _tiny_run(tiny_bert_dir, str(tmp_path / "run"), step=2)
  path = os.path.join(run_dir, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["train"]["seqs_per_task"] = 64
  with open(path, "w") as f:
    json.dump(config, f)
  args = ["diagnose", f"--workdir={run_dir}", "--from_checkpoint", "--batches=1"]
  assert cli.call(diagnose.main, diagnose.FLAGS, args) == 2
  err = capsys.readouterr().err
  assert err.startswith("diagnose: error: train.seqs_per_task=64 puts more examples of a task")
  assert len(err.splitlines()) == 1


def test_checkpoint_mode_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(diagnose.DiagnoseError, match="config.json not found"):
    diagnose.checkpoint_rows(str(tmp_path), 2)
