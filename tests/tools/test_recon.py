"""mtl_jax.recon: Recon's layer scores on a synthetic metrics.jsonl, checked against a NumPy
transcription of the reference scorer (moukamisama/Recon, scripts/cal_conflict_scores.py:
per layer, the number of (iteration, task pair) with cosine < S, layers sorted by it with
a stable sort), over the first quarter of the run; and the config it writes loads, builds
and makes the chosen groups task-specific."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from mtl_jax.config import run_spec
from mtl_jax.tools import cli, recon

GROUPS = ["embeddings", "layer_0.attention", "layer_0.ffn", "layer_1.attention", "layer_1.ffn"]
PAIRS = ["sst-quora", "sst-sts", "quora-sts"]
STEPS, LOG_EVERY = 40, 2


def _run(tmp_path, tiny_bert_dir, seed=0):
  """A workdir: config.json (full fine-tuning, 40 steps) and a metrics.jsonl whose group
  cosines are random; layer_1.attention repeats layer_0.ffn's (a tie), and after the first
  quarter layer_0.attention turns strongly negative (which must not count)."""
  config = tiny_config(tiny_bert_dir, steps=STEPS, log_every=LOG_EVERY)
  config.adapter.kind = "full"
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json_best_effort())
  rng = np.random.default_rng(seed)
  cos = {}
  with open(workdir / "metrics.jsonl", "w") as f:
    for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
      row = {"step": step, "loss": 1.0, "grad/cosine": [[1.0]]}
      for g in GROUPS:
        values = rng.uniform(-0.5, 0.6, len(PAIRS))
        if g == "layer_1.attention":
          values = cos[("layer_0.ffn", step)]
        if g == "layer_0.attention" and step > STEPS / 4:
          values = np.full(len(PAIRS), -0.9)
        cos[(g, step)] = values
        row.update({f"group_cos/{g}/{p}": float(v) for p, v in zip(PAIRS, values)})
      f.write(json.dumps(row) + "\n")
      if step % 10 == 0:
        f.write(json.dumps({"step": step, "dev/overall": 0.5}) + "\n")  # Not a gradient row.
  return str(workdir), config, cos


def _reference(cos, s):
  """cal_conflict_scores.py in NumPy: per layer the iterations' pair cosines [N, P] of the
  first quarter, (v < S) summed; layers sorted by it, highest first, stable."""
  steps = [t for t in range(LOG_EVERY, STEPS + 1, LOG_EVERY) if t <= STEPS // 4]
  scores = {g: int((np.stack([cos[(g, t)] for t in steps]) < s).sum()) for g in GROUPS}
  return scores, [g for g, _ in sorted(scores.items(), key=lambda kv: kv[1], reverse=True)]


@pytest.mark.parametrize("s", [0.0, -0.1, 0.25])
def test_scores_and_ranking_match_the_reference(tmp_path, tiny_bert_dir, s):
  workdir, _, cos = _run(tmp_path, tiny_bert_dir)
  summary, ranked, _ = recon.score(workdir, s)
  want, order = _reference(cos, s)
  assert {g: v["s_conflict"] for g, v in summary["groups"].items()} == want
  assert ranked == order
  assert summary["steps"] == [2, 4, 6, 8, 10]  # The first quarter of 40 steps.
  tied = want["layer_0.ffn"] == want["layer_1.attention"]
  assert tied and ranked.index("layer_0.ffn") < ranked.index("layer_1.attention")


def test_the_written_config_loads_builds_and_copies_the_top_groups(tmp_path, tiny_bert_dir, capsys):
  workdir, config, cos = _run(tmp_path, tiny_bert_dir)
  out = str(tmp_path / "recon.py")
  assert (
    cli.call(
      recon.main, recon.FLAGS, ["recon", f"--workdir={workdir}", "--top_k=2", f"--output={out}"]
    )
    == 0
  )
  printed = capsys.readouterr().out
  _, order = _reference(cos, 0.0)
  assert f"task-specific: {', '.join(sorted(order[:2], key=GROUPS.index))}" in printed
  assert "S-conflict" in printed

  module_spec = importlib.util.spec_from_file_location("recon_config", out)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  loaded = module.get_config()
  assert loaded.adapter.task_specific == tuple(sorted(order[:2], key=GROUPS.index))
  spec = run_spec.build(loaded)
  assert spec.model.task_specific == loaded.adapter.task_specific
  # Everything else is the run's config.
  a, b = json.loads(loaded.to_json_best_effort()), json.loads(config.to_json_best_effort())
  a["adapter"].pop("task_specific"), b["adapter"].pop("task_specific")
  assert a == b

  default = recon.run(workdir, 1)  # Beside the run by default.
  assert default["config"] == os.path.join(workdir, "recon_top1.py")
  assert os.path.isfile(default["config"])


def test_errors(tmp_path, tiny_bert_dir, capsys):
  workdir, _, _ = _run(tmp_path, tiny_bert_dir)
  with pytest.raises(recon.ReconError, match="--top_k=6: the run logs 5 shared groups"):
    recon.run(workdir, 6)
  assert cli.call(recon.main, recon.FLAGS, ["recon", f"--workdir={workdir}", "--top_k=0"]) == 2
  # A run whose first group row comes after its first quarter.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] > 10)
  with pytest.raises(recon.ReconError, match="smaller train.log_every"):
    recon.score(workdir)
