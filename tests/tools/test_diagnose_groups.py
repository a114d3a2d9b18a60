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


def test_mean_cosine_p_value_is_students_t_with_two_degrees_of_freedom():
  # Cosines 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt(3)) = 2 sqrt(3), and
  # Student's t with 2 dof has CDF 1/2 + t / (2 sqrt(2 + t^2)): two-sided p = 1 - t / sqrt(14).
  cosine = np.array([0.1, 0.2, 0.3]).reshape(1, 1, 3)
  expected = 1 - 2 * np.sqrt(3) / np.sqrt(14)
  np.testing.assert_allclose(diagnose.mean_cosine_p_values(cosine)[0, 0], expected, rtol=1e-9)
  # Two cells: Holm multiplies the smaller p by 2; a constant cell has no test (None in JSON).
  two = np.stack([cosine[0], np.full((1, 3), 0.5)])
  p = diagnose.mean_cosine_p_values(two)
  np.testing.assert_allclose(p[0, 0], expected, rtol=1e-9)
  assert np.isnan(p[1, 0])


def test_only_a_group_whose_tasks_disagree_beyond_noise_is_named(tmp_path, capsys):
  noise = centred_noise(0, (40, 3))
  rows = [
    {
      "step": 10 * (k + 1),
      "loss": 1.0,
      "grad/cosine": np.eye(3).tolist(),
      **{f"group_cos/layer_0.ffn/{p}": float(noise[k, n]) for n, p in enumerate(PAIRS)},
      # Quora and STS pull layer_1.ffn apart at every step: mean -0.3, noise 0.1.
      **{
        f"group_cos/layer_1.ffn/{p}": float(noise[k, 2 - n] - (0.3 if p == "quora-sts" else 0.0))
        for n, p in enumerate(PAIRS)
      },
    }
    for k in range(40)
  ]
  write_rows(tmp_path, rows)
  summary = diagnose.run_groups(str(tmp_path))
  assert [(g, p) for g, p, _, _ in diagnose.significant_cells(summary)] == [
    ("layer_1.ffn", "quora-sts")
  ]
  assert summary["groups"]["layer_0.ffn"]["p_mean_cosine"]["sst-quora"] > 0.05
  assert "layer_1.ffn quora-sts (-0.3" in capsys.readouterr().out


def test_pure_noise_names_no_group(tmp_path, capsys):
  noise = centred_noise(1, (30, 6, 3))
  rows = [
    {
      "step": k,
      "loss": 1.0,
      "grad/cosine": np.eye(3).tolist(),
      **{
        f"group_cos/layer_{g}.ffn/{p}": float(noise[k, g, n])
        for g in range(6)
        for n, p in enumerate(PAIRS)
      },
    }
    for k in range(30)
  ]
  write_rows(tmp_path, rows)
  assert diagnose.significant_cells(diagnose.run_groups(str(tmp_path))) == []
  assert "in no group" in capsys.readouterr().out


PAIRS = ("sst-quora", "sst-sts", "quora-sts")


def centred_noise(seed: int, shape: tuple) -> np.ndarray:
  """Normal noise (sd 0.1) with each cell's mean over the steps (axis 0) exactly 0: cosines
  that carry no disagreement, so no test may name them whatever the seed."""
  x = np.random.default_rng(seed).normal(0.0, 0.1, size=shape)
  return x - x.mean(axis=0)
