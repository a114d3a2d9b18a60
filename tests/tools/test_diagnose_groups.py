"""python -m mtl_jax.diagnose --groups: heatmap and Recon's S-conflict score per group."""

from __future__ import annotations

import json
import os

import numpy as np

from mtl_jax.tools import diagnose


def write_rows(workdir, rows):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_s_conflict_scores_and_heatmap(tmp_path, capsys):
  pairs = ["sst-quora", "sst-sts", "quora-sts"]
  cos = {  # group -> [step][pair]
    "layer_0.ffn": [[-0.5, 0.1, -0.01], [-0.2, 0.3, 0.2]],
    "embeddings": [[0.4, 0.5, 0.6], [0.1, -0.05, 0.3]],
    "layer_0.attention": [[0.0, 0.2, -0.3], [0.1, 0.2, 0.3]],
  }
  rows = []
  for k, step in enumerate((10, 20)):
    row = {"step": step, "loss": 1.0, "grad/cosine": np.eye(3).tolist()}
    for g, values in cos.items():
      row.update({f"group_cos/{g}/{p}": v for p, v in zip(pairs, values[k])})
      row.update({f"group_norm/{g}/sst": 1.0})
    rows.append(row)
  write_rows(tmp_path, rows)
  summary = diagnose.run_groups(str(tmp_path), s=0.0)
  groups = summary["groups"]
  assert list(groups) == ["embeddings", "layer_0.attention", "layer_0.ffn"]  # Network order.
  assert {g: v["s_conflict"] for g, v in groups.items()} == {
    "embeddings": 1,
    "layer_0.attention": 1,  # 0.0 is not below S=0.
    "layer_0.ffn": 3,
  }
  assert groups["layer_0.ffn"]["measurements"] == 6
  assert diagnose.group_summary(rows, s=-0.1)["groups"]["layer_0.ffn"]["s_conflict"] == 2
  assert diagnose.group_summary(rows, s=0.35)["groups"]["embeddings"]["s_conflict"] == 3
  np.testing.assert_allclose(groups["embeddings"]["mean_cosine"]["sst-sts"], 0.225)
  out = capsys.readouterr().out
  assert out.index("layer_0.ffn") < out.index("embeddings")  # Highest score first.
  png = tmp_path / "diagnostics" / "group_cosine.png"
  assert png.stat().st_size > 1000
  assert json.loads((tmp_path / "diagnostics" / "group_summary.json").read_text())["S"] == 0.0


def test_no_group_rows_is_a_clear_error(tmp_path):
  write_rows(tmp_path, [{"step": 1, "loss": 1.0, "grad/cosine": [[1.0]]}])
  try:
    diagnose.run_groups(str(tmp_path))
  except diagnose.DiagnoseError as e:
    assert "group_cos" in str(e)
  else:
    raise AssertionError("expected DiagnoseError")
