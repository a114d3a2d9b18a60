"""A study's ladder: each rung read against the rung it builds on, not only the baseline.

A recipe is found by changing one thing at a time (docs/recipe.md), so a rung's finding
is its difference from its parent rung, over the seeds both ran, on the same dev examples.
study.json's `"ladder"` names the parents ({rung: the rung it builds on}, in the order to
show; checked by ledger.read_study); `steps` computes each rung's differences from the
ledger's rows and stored dev predictions, and report.ladder_section shows them. With
predictions a difference comes with the paired bootstrap over dev examples
(stats.paired_bootstrap: the same resampled examples for both rungs, averaged over the
shared seeds), which is what one seed can say; without them, it is the difference of the
ledger's metrics alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtl_jax.study import ledger, stats


def steps(directory: str, rows: Sequence[dict], ladder: dict[str, str]) -> list[dict]:
  """Per rung (ladder order) with finished runs of it and of its parent at a common seed:
  {rung, parent, seeds, diff: {ledger column: mean of rung − parent over the seeds},
  bootstrap: {column: {mean, low, high, p}} or None when a run has no stored predictions}."""
  finished = ledger.groups(rows)
  metrics = ledger.task_metrics(dict.fromkeys(k for r in rows for k in r))  # The ledger's.
  metric = {c: m for m, c in ledger.metric_columns(metrics).items()}  # Column -> metric.
  labels = ledger.load_labels(directory)
  out = []
  for rung, parent in ladder.items():
    seeds = sorted(set(finished.get(rung, {})) & set(finished.get(parent, {})))
    if not seeds:
      continue
    pairs = [(finished[rung][s], finished[parent][s]) for s in seeds]
    diff = {c: sum(a[c] - b[c] for a, b in pairs) / len(seeds) for c in metric}
    preds = [
      (ledger.load_predictions(directory, a), ledger.load_predictions(directory, b))
      for a, b in pairs
    ]
    bootstrap = None
    if labels is not None and all(a is not None and b is not None for a, b in preds):
      got = stats.paired_bootstrap([a for a, _ in preds], [b for _, b in preds], labels, metrics)
      bootstrap = {c: got[m] for c, m in metric.items()}
    out.append(dict(rung=rung, parent=parent, seeds=seeds, diff=diff, bootstrap=bootstrap))
  return out
