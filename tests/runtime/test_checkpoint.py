"""Checkpoint safety: resuming with a changed config, the best dev checkpoint, early stopping,
and a save killed midway (tiny random BERT, a slice of the real data)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import pytest
from conftest import needs_data, read_metrics, tiny_config

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import resume, run_spec
from mtl_jax.runtime import checkpoint
from mtl_jax.runtime.checkpoint import (
  BEST_CHECKPOINT,
  Checkpointer,
  UnreadableCheckpointError,
  read_best,
)


def read_config(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


# --- The config diff itself (no training)


def test_resume_mismatches_names_every_changed_key_and_ignores_harmless_ones():
  saved = json.loads(default.get_config().to_json_best_effort())
  config = default.get_config()
  config.adapter.rank = 16
  config.train.steps = 500
  config.train.length_buckets = (32, 128)
  config.train.log_every = 1  # Harmless ones below.
  config.train.eval_every = 5
  config.train.keep_checkpoints = 7
  config.eval.seqs_per_batch = 8
  assert resume.resume_mismatches(saved, config) == [
    ("adapter.rank", 8, 16),
    ("train.length_buckets", [16, 32, 48, 64, 96, 128], [32, 128]),
    ("train.steps", 300, 500),
  ]
  with pytest.raises(run_spec.ConfigError) as e:
    resume.check_resume(saved, config, "runs/x")
  message = str(e.value)
  assert "config.adapter.rank: checkpoint has 8, now 16" in message
  assert "config.train.steps: checkpoint has 300, now 500" in message
  assert "fresh --workdir" in message


def test_resume_accepts_an_old_config_without_newer_keys():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["train"]["loss_weighting"], saved["train"]["early_stopping_patience"]
  assert resume.resume_mismatches(saved, default.get_config()) == []
  changed = default.get_config()
  changed.train.loss_weighting = "uncertainty"
  assert resume.resume_mismatches(saved, changed) == [
    ("train.loss_weighting", "none", "uncertainty")
  ]


def test_early_stopping_needs_eval_every():
  config = default.get_config()
  config.model.path = "x"
  config.train.early_stopping_patience = 2
  with pytest.raises(run_spec.ConfigError, match="early_stopping_patience.*eval_every"):
    run_spec.build(config)
  config.train.eval_every = 10
  run_spec.build(config)


# --- Whole runs


@needs_data
def test_resume_refuses_a_changed_model_key_and_accepts_a_harmless_one(tiny_bert_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(tiny_bert_dir, steps=2), workdir)
  saved = read_config(workdir)

  changed = tiny_config(tiny_bert_dir, steps=2)
  changed.adapter.rank = 4
  changed.model.pooling = "cls"
  with pytest.raises(run_spec.ConfigError) as e:
    train.train_and_evaluate(changed, workdir)
  assert "config.adapter.rank: checkpoint has 8, now 4" in str(e.value)
  assert "config.model.pooling: checkpoint has 'mean', now 'cls'" in str(e.value)
  assert read_config(workdir) == saved  # Not overwritten by the refused config.

  harmless = tiny_config(tiny_bert_dir, steps=2, log_every=2)
  train.train_and_evaluate(harmless, workdir)
  assert read_config(workdir)["train"]["log_every"] == 2


@needs_data
def test_best_checkpoint_is_kept_and_recorded(tiny_bert_dir, tmp_path, monkeypatch):
  # Dev overall: 0.5 at step 1 (the best), then worse; keep_checkpoints=1 would prune it.
  scores = iter([0.5, 0.3, 0.2, 0.1])
  real_evaluate = train.evaluate

  def scripted_evaluate(*args, **kwargs):
    results, preds = real_evaluate(*args, **kwargs)
    return dict(results, overall=next(scores)), preds

  monkeypatch.setattr(train, "evaluate", scripted_evaluate)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(
    tiny_config(tiny_bert_dir, eval_every=1, keep_checkpoints=1, checkpoint_every=1), workdir
  )

  best = read_best(workdir)
  assert best["step"] == 1 and best["overall"] == 0.5 and "sst/accuracy" in best["metrics"]
  assert best["checkpoint"] == os.path.join(BEST_CHECKPOINT, "1")
  assert Checkpointer(workdir, 1, 1, subdir=BEST_CHECKPOINT).manager.all_steps() == [1]
  assert Checkpointer(workdir, 1, 1).manager.all_steps() == [4]  # Resume still reads the latest.
  dev = {r["step"]: r["dev/overall"] for r in read_metrics(workdir) if "dev/overall" in r}
  assert dev == {1: 0.5, 2: 0.3, 3: 0.2, 4: 0.1}


@needs_data
def test_early_stopping_stops_saves_and_writes_predictions(tiny_bert_dir, tmp_path, monkeypatch):
  scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])  # Never improves after step 1.
  real_evaluate = train.evaluate

  def scripted_evaluate(*args, **kwargs):
    results, preds = real_evaluate(*args, **kwargs)
    return dict(results, overall=next(scores)), preds

  monkeypatch.setattr(train, "evaluate", scripted_evaluate)
  workdir = str(tmp_path / "run")
  config = tiny_config(tiny_bert_dir, steps=6, eval_every=1, early_stopping_patience=1)
  results = train.train_and_evaluate(config, workdir)

  assert results["overall"] == 0.4  # The evaluation that stopped it, at step 2, reused.
  assert Checkpointer(workdir, 1, 1).latest_step() == 2  # Saved although checkpoint_every=2.
  assert read_best(workdir)["step"] == 1
  assert max(r["step"] for r in read_metrics(workdir)) == 2
  assert len(os.listdir(os.path.join(workdir, "predictions"))) == 5
  # The same command again does not train on past the stop.
  train.train_and_evaluate(config, workdir)
  assert Checkpointer(workdir, 1, 1).latest_step() == 2


@needs_data
def test_half_written_checkpoint_is_ignored(tiny_bert_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(tiny_bert_dir), workdir)  # Checkpoints 2 and 4.
  before = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
  # Turn step 4 into what a save killed midway leaves: orbax's temporary directory
  # (`<step>.orbax-checkpoint-tmp-<timestamp>`), without commit_success.txt.
  ckpts = os.path.join(workdir, "checkpoints")
  partial = os.path.join(ckpts, "4.orbax-checkpoint-tmp-1763780000000000")
  os.rename(os.path.join(ckpts, "4"), partial)
  os.remove(os.path.join(partial, "commit_success.txt"))
  shutil.rmtree(os.path.join(partial, "state"))
  assert Checkpointer(workdir, 1, 1).latest_step() == 2
  assert os.path.isdir(partial)  # A reader (export, diagnose) never deletes a save in progress.

  train.train_and_evaluate(tiny_config(tiny_bert_dir), workdir)  # Resumes from step 2.
  assert sorted(os.listdir(ckpts)) == ["2", "4"]  # The leftover is cleaned up.
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]  # Steps 3-4 trained again, logged once.
  assert {r["step"]: r["loss"] for r in rows} == before


def _never_retrieved_error_is_logged(raise_in: str, caplog) -> bool:
  """Raises in code whose file is `raise_in`, leaves the exception in a future nobody
  awaits, frees it, and says whether asyncio's report of it reached the log."""
  import asyncio
  import gc

  namespace = {}
  exec(
    compile("def read():\n  raise ValueError('OUT_OF_RANGE: truncated')\n", raise_in, "exec"),
    namespace,
  )
  loop = asyncio.new_event_loop()
  try:
    future = loop.create_future()
    try:
      namespace["read"]()
    except ValueError as e:
      future.set_exception(e)
    caplog.clear()
    del future
    gc.collect()
  finally:
    loop.close()
  return any("exception was never retrieved" in r.getMessage() for r in caplog.records)


def test_reads_left_over_from_a_failed_restore_are_not_reported_but_other_errors_are(caplog):
  """A failed restore's other reads surface later as asyncio's "Future exception was never
  retrieved" with a traceback, which buried the trainer's one-line error (a CI failure):
  those raised inside orbax are dropped once a restore has run, others still reported."""
  from mtl_jax.runtime import checkpoint

  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
  checkpoint._ignore_reads_of_an_aborted_restore()
  assert not _never_retrieved_error_is_logged(orbax_file, caplog)
  assert _never_retrieved_error_is_logged(os.path.join(os.sep, "src", "mine.py"), caplog)


@pytest.mark.parametrize("text", ['{"step": 1, "over', "[]", '{"overall": 0.5}'])
def test_a_damaged_best_json_is_named_not_a_traceback(tmp_path, text):
  (tmp_path / "best.json").write_text(text)
  with pytest.raises(UnreadableCheckpointError, match=r"best\.json: damaged"):
    read_best(str(tmp_path))


# --- Checksums and failed writes (a small pytree, no model)


def _tiny_state(value: float = 1.0) -> dict:
  import jax.numpy as jnp

  return {"w": jnp.full((64, 64), value), "b": jnp.arange(16.0) * value}


def _save_steps(workdir: str, steps) -> None:
  ckpt = Checkpointer(workdir, 1, 5, cleanup_tmp=True)
  for step in steps:
    ckpt.save(step, _tiny_state(step), {"step": step}, force=True)
  ckpt.close()


def _flip_a_byte(step_dir: str) -> str:
  """Flips one byte in the middle of the step's largest file (same length); returns it."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  path = max((f for f in files if os.path.basename(f) != checkpoint.CHECKSUMS), key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  with open(path, "r+b") as f:
    f.write(data)
  return path


def test_a_changed_byte_is_caught_by_the_checksums_set_aside_and_the_previous_step_used(
  tmp_path, caplog
):
  workdir = str(tmp_path)
  _save_steps(workdir, [1, 2])
  latest = os.path.join(workdir, "checkpoints", "2")
  for step in ("1", "2"):  # Recorded with the step, committed with it.
    assert checkpoint.verify_checksums(os.path.join(workdir, "checkpoints", step))
  assert not [d for d in os.listdir(tmp_path / "checkpoints") if "tmp" in d]
  damaged = _flip_a_byte(latest)
  with pytest.raises(checkpoint.ChecksumError, match="differs from the checksum"):
    Checkpointer(workdir, 1, 1).restore(_tiny_state(), step=2)
  caplog.clear()
  restored, meta = Checkpointer(workdir, 1, 5).restore(_tiny_state(), set_aside=True)
  assert meta["step"] == 1 and float(restored["b"][1]) == 1.0
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 1, warnings
  assert "checkpoint step 2 does not restore: moved it to" in warnings[0]
  assert "resuming from step 1 (ChecksumError" in warnings[0]
  moved = os.path.join(workdir, checkpoint.CORRUPT, "2")
  assert os.path.isfile(os.path.join(moved, os.path.relpath(damaged, latest)))
  assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_a_step_saved_before_checksums_restores_without_a_warning(tmp_path, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir, [3])
  os.remove(os.path.join(workdir, "checkpoints", "3", checkpoint.CHECKSUMS))
  caplog.clear()
  restored, meta = Checkpointer(workdir, 1, 1).restore(_tiny_state())
  assert meta["step"] == 3 and float(restored["b"][1]) == 3.0
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_refused_checkpoint_write_is_one_error_naming_the_step_and_what_to_do(
  tmp_path, monkeypatch, code
):
  """The disk refuses the save of step 2 (injected where the step is finalized, in
  orbax's background thread): CheckpointWriteError names the step, the directory and what
  to do; step 1 is intact and step 2 is not listed."""
  workdir = str(tmp_path)
  _save_steps(workdir, [1])

  def refuse(step_dir):
    raise OSError(code, os.strerror(code), os.path.join(step_dir, "x"))

  monkeypatch.setattr(checkpoint, "write_checksums", refuse)
  ckpt = Checkpointer(workdir, 1, 5, cleanup_tmp=True)
  directory = os.path.join(workdir, "checkpoints")
  reason = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}[code]
  with pytest.raises(checkpoint.CheckpointWriteError) as e:
    ckpt.save(2, _tiny_state(2.0), {"step": 2}, force=True)
    ckpt.close()
  assert str(e.value).startswith(f"{reason} writing checkpoint step 2 to {directory}: ")
  assert e.value.errno == code
  assert Checkpointer(workdir, 1, 5).manager.all_steps() == [1]


def test_a_reader_creates_no_checkpoints_directory(tmp_path):
  Checkpointer(str(tmp_path), 1, 1).latest_step()
  assert not os.path.exists(tmp_path / "checkpoints")
