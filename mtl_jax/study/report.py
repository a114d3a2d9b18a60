"""Reports of sweeps and studies: runs grouped by seed, differences from a baseline with
their intervals and verdicts, evaluation noise, gradient diagnostics, provenance, plots.

The sections are functions of ledger-style rows (mtl_jax.study.ledger.columns: name, seed,
a column per task metric (sst_acc, ...), overall, overall_lo, grad_cosine, commit, command)
to lines of markdown, so a sweep's report, a ledger's report.md and README's tables say the
same numbers in the same words; the writers at the end put them in files with the training
curves. The metrics are those of the rows' tasks (`metric_labels`), whatever they are.
"""

from __future__ import annotations

import collections
import csv
import datetime
import math
import os
from collections.abc import Sequence

import numpy as np

from mtl_jax.study import ladder, ledger, stats
from mtl_jax.tools import diagnose

# How the tables name the CS224N tasks and the metrics; another task by its own name.
_TASK_NAMES = {"sst": "SST", "quora": "Quora", "sts": "STS"}
_METRIC_NAMES = {"accuracy": "acc", "pearson": "Pearson"}


def metric_labels(rows: Sequence[dict]) -> dict[str, str]:
  """{ledger column: label} of the rows' task metrics (the task columns of their keys,
  ledger.task_metrics, first seen first) and overall: "SST acc", "Quora acc", "STS
  Pearson", "cfimdb acc", ..., "overall"."""
  metrics = ledger.task_metrics(dict.fromkeys(k for r in rows for k in r))
  out = {}
  for m, column in ledger.metric_columns(metrics).items():
    task, _, kind = m.partition("/")
    out[column] = f"{_TASK_NAMES.get(task, task)} {_METRIC_NAMES[kind]}" if kind else m
  return out


def table(header: list[str], body: list[list[str]]) -> list[str]:
  return [
    "| " + " | ".join(header) + " |",
    "|" + " --- |" * len(header),
    *("| " + " | ".join(r) + " |" for r in body),
  ]


def number(v, fmt: str = ".4f") -> str:
  """v formatted, or "-" for a missing or undefined (nan) value."""
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  minutes, s = divmod(round(seconds), 60)
  return f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def _mean_sd(values: list) -> str:
  mean, sd, _ = stats.mean_sd(values)
  return "-" if mean is None else f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def _diff(d: dict) -> str:
  """mean [low, high] of a paired difference (its 95% t interval), or mean (n=1)."""
  if d["n"] < 2:
    return f"{number(d['mean'], '+.4f')} (n={d['n']})"
  return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _paired(by_seed: dict[int, dict], base: dict[int, dict], column: str) -> dict:
  return stats.paired_difference(
    {s: r.get(column) for s, r in by_seed.items()}, {s: r.get(column) for s, r in base.items()}
  )


def comparisons(
  rows: Sequence[dict], baseline: str | None, margins: dict[str, float] | None = None
) -> dict[tuple[str, str], dict]:
  """{(configuration, column): comparison} of every configuration with the baseline, every
  metric of the rows (metric_labels): the study's family of tests. A comparison is
  stats.paired_difference's {mean, low, high, n, seeds} plus sd (of the paired
  differences), p (paired t), p_tost (equivalence within ±margin, the column's of
  `margins`: ledger.default_margins by default), their Holm-adjusted p_holm and
  p_tost_holm over the family, the verdicts `raw` and `holm` (stats.four_way), mde (at
  this n and sd: stats.mde) and n_needed (seeds at which the observed mean difference, if
  true, is detected with power 0.8)."""
  labels = metric_labels(rows)
  margins = {**ledger.default_margins(ledger.task_metrics(labels)), **(margins or {})}
  g = ledger.groups(rows)
  if baseline not in g:
    return {}
  out = {}
  for name, by_seed in g.items():
    if name == baseline:
      continue
    for column in labels:
      d = _paired(by_seed, g[baseline], column)
      diffs = [by_seed[s][column] - g[baseline][s][column] for s in d["seeds"]]
      t = stats.t_test(diffs)
      out[name, column] = {
        **d,
        "sd": t["sd"],
        "p": t["p"],
        "margin": margins[column],
        "p_tost": stats.tost(diffs, margins[column]),
        "mde": stats.mde(t["sd"], d["n"]),
        "n_needed": stats.n_needed(d["mean"], t["sd"]) if d["n"] >= 2 else None,
      }
  keys = list(out)
  for field in ("p", "p_tost"):
    for k, adjusted in zip(keys, stats.holm([out[k][field] for k in keys])):
      out[k][f"{field}_holm"] = adjusted
  for c in out.values():
    c["raw"] = stats.four_way(c["mean"], c["p"], c["p_tost"], c["margin"])
    c["holm"] = stats.four_way(c["mean"], c["p_holm"], c["p_tost_holm"], c["margin"])
  return out


def _verdicts(c: dict) -> str:
  return c["raw"] if c["raw"] == c["holm"] else f"{c['raw']} (Holm: {c['holm']})"


def seed_table(
  rows: Sequence[dict],
  baseline: str | None,
  overall_only: bool = True,
  margins: dict[str, float] | None = None,
) -> list[str]:
  """Per configuration: seeds, mean ± sample sd of every metric and, with a baseline, the
  paired difference of overall from it (95% t interval, n - 1 dof), its verdicts (raw, and
  Holm-adjusted over the study's family of configurations × metrics; better / worse /
  equivalent within ±margin (TOST) / inconclusive) and the minimum detectable effect."""
  g, labels = ledger.groups(rows), metric_labels(rows)
  header = ["configuration", "n", "seeds", *labels.values()]
  family = comparisons(rows, baseline, margins)
  if baseline in g:
    header += [f"overall − {baseline} (95% CI)", "verdict (Holm where it differs)", "MDE"]
  body = []
  for name, by_seed in g.items():
    cells = [
      f"`{name}`",
      str(len(by_seed)),
      ",".join(map(str, sorted(by_seed))),
      *(_mean_sd([r.get(c) for r in by_seed.values()]) for c in labels),
    ]
    if baseline in g:
      if name == baseline:
        cells += ["baseline", "", ""]
      else:
        c = family[name, "overall"]
        cells += [_diff(c), _verdicts(c), number(c["mde"] if c["n"] >= 2 else None)]
    body.append(cells)
  return table(header, body)


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.0f}"


def _span(values: Sequence[float], show) -> str:
  """The values' range as `show` writes its ends: low–high, or one number when they agree."""
  low, high = show(min(values)), show(max(values))
  return low if low == high else f"{low}–{high}"


def findings(
  rows: Sequence[dict],
  baseline: str | None,
  margins: dict | None = None,
  directory: str | None = None,
) -> list[str]:
  """The study's verdicts in sentences, generated (README and report.md): nothing here
  is typed by hand, so nothing can drift from the ledger. With the ledger's `directory`,
  also whether the paired bootstrap over dev examples could be computed."""
  g, labels = ledger.groups(rows), metric_labels(rows)
  family = comparisons(rows, baseline, margins)
  if not family:
    return []
  study = ledger.read_study(directory) if directory is not None else None
  machines, split = _machines(rows, study)
  times = []
  for name, by_seed in g.items():
    by_tag: dict[str, list[float]] = {}  # One entry unless `split`.
    for r in by_seed.values():
      if r.get("seconds") is not None:
        by_tag.setdefault(_machine_tag(r, machines, study), []).append(r["seconds"])
    spans = [
      _span(secs, _minutes) + (f" on {tag}" if split else "") for tag, secs in by_tag.items()
    ]
    if spans:
      times.append(f"`{name}` {', '.join(spans)}")
  n = sorted({c["n"] for c in family.values()})
  lines = [
    f"- {len(g)} configurations, {len(rows)} runs"
    + (
      f" (wall time of the process that finished each run, in minutes: {', '.join(times)}; "
      "a resumed run counts its last process only)"
      if times
      else ""
    )
    + f"; {len(family)} comparisons with `{baseline}` (configurations × {len(labels)} metrics) at "
    f"n = {', '.join(map(str, n))} paired seeds."
  ]
  for label, key in (("Without correction", "raw"), ("Holm-adjusted", "holm")):
    found = [
      f"`{name}` {labels[col]} {c['mean']:+.4f} ({c[key]})"
      for (name, col), c in family.items()
      if c[key] in ("better", "worse")
    ]
    lines.append(
      f"- {label}: "
      + ("; ".join(found) if found else "no difference detected")
      + f" ({len(found)} of {len(family)})."
    )
  equivalent = [
    f"`{name}` {labels[col]}" for (name, col), c in family.items() if c["holm"].startswith("equiv")
  ]
  if equivalent:
    lines.append("- Equivalent to the baseline (TOST, Holm): " + ", ".join(equivalent) + ".")
  overall = {name: c for (name, col), c in family.items() if col == "overall" and c["n"] >= 2}
  if overall:
    mdes = [c["mde"] for c in overall.values() if math.isfinite(c["mde"])]
    best = max(overall.items(), key=lambda kv: kv[1]["mean"])
    need = best[1]["n_needed"]
    lines.append(
      f"- Overall: {sum(c['holm'] == 'inconclusive' for c in overall.values())} of "
      f"{len(overall)} comparisons inconclusive at ±{best[1]['margin']:g}; the minimum "
      f"detectable effect at this n (paired t, alpha 0.05, power 0.8, each comparison's sd "
      "of paired differences) is "
      + (_span(mdes, "{:.4f}".format) if mdes else "not defined (no spread)")
      + "; the largest mean gain, "
      f"`{best[0]}` {best[1]['mean']:+.4f}, "
      + (
        "is detected at this n"
        if best[1]["raw"] in ("better", "worse")
        else "would need "
        + (f"{need} seeds" if need else "more seeds than can be computed")
        + " to be detected with power 0.8 (if it were the true difference)"
      )
      + "."
    )
  if study and study["reference"]:
    lines += reference_lines(rows, study["reference"])
  if machines:
    lines.append(_machines_line(machines, rows, study))
  if directory is not None:
    stored = sum(ledger.load_predictions(directory, r) is not None for r in rows)
    lines.append(
      f"- Paired bootstrap over dev examples: {stored} of {len(rows)} rows have stored dev "
      "predictions"
      + (
        " (report.md)."
        if stored
        else ": not computed (the rows predate the stored predictions, and their "
        "workdirs are not here); the verdicts rest on the seed-level t test."
      )
    )
  return lines


def _machine(row: dict, study: dict | None) -> str | None:
  """The CPU a row's wall time was measured on: its `machine` column, else study.json's
  (rows from before the column)."""
  return row.get("machine") or (study["machine"] if study else None)


def _machine_tag(row: dict, machines: dict[str, str], study: dict | None) -> str:
  """A row's machine as the findings and the Runs table name it (`_machines`' tag)."""
  return machines.get(_machine(row, study), "an unnamed machine")


def _machines(rows: Sequence[dict], study: dict | None) -> tuple[dict[str, str], bool]:
  """({machine: its tag} of the timed rows, first seen first: the machine itself when there
  is one, "A", "B", ... when the rows were timed on several; whether their wall times
  must be read apart, by machine: CPUs differ 2-3x per step, and a row that names no
  machine may be any of them)."""
  timed = [_machine(r, study) for r in rows if r.get("seconds") is not None]
  named = list(dict.fromkeys(m for m in timed if m))
  tags = {named[0]: named[0]} if len(named) == 1 else {m: chr(65 + i) for i, m in enumerate(named)}
  return tags, len(set(timed)) > 1


def _machines_line(machines: dict[str, str], rows: Sequence[dict], study: dict | None) -> str:
  """Which CPU the wall times were measured on, and where that is recorded: each row's
  `machine` column, or study.json's `machine` for rows from before the column."""
  timed = [r for r in rows if r.get("seconds") is not None]
  sources = []
  if any(r.get("machine") for r in timed):
    sources.append("the rows' machine column")
  if any(not r.get("machine") and _machine(r, study) for r in timed):
    sources.append("study.json for rows without one" if sources else "study.json")
  unnamed = sum(_machine(r, study) is None for r in timed)
  if unnamed:
    sources.append(f"{unnamed} row{'s' * (unnamed != 1)} name{'s' * (unnamed == 1)} no machine")
  if len(machines) == 1:
    return f"- Wall times measured on: {next(iter(machines))} ({'; '.join(sources)})."
  listed = "; ".join(f"{tag} = {m}" for m, tag in machines.items())
  return f"- Wall times measured on: {listed} ({'; '.join(sources)})."


def reference_lines(rows: Sequence[dict], reference: dict) -> list[str]:
  """Each configuration's mean over seeds with its 95% Student-t interval, set against
  published numbers (study.json's reference): where the reference falls, below the
  interval, inside it (no difference this many seeds can tell) or above it."""
  g, labels = ledger.groups(rows), metric_labels(rows)
  lines = []
  for name, by_seed in g.items():
    parts = []
    for column, value in reference["values"].items():
      mean, low, high = stats.t_interval([r.get(column) for r in by_seed.values()])
      if not math.isfinite(mean):
        continue
      if math.isfinite(low):
        where = "below" if value < low else "above" if value > high else "inside"
        parts.append(
          f"{labels[column]} {mean:.4f} [{low:.4f}, {high:.4f}] vs {value:g} ({where} the interval)"
        )
      else:
        parts.append(f"{labels[column]} {mean:.4f} vs {value:g}")
    if parts:
      how = "mean, 95% t interval over seeds" if len(by_seed) > 1 else "one seed, no interval"
      lines.append(
        f"- `{name}` (n = {len(by_seed)}; {how}) against {reference['label']}: "
        + "; ".join(parts)
        + "."
      )
  return lines


def study_sections(
  rows: Sequence[dict],
  baseline: str | None,
  margins: dict[str, float] | None = None,
  directory: str | None = None,
) -> list[str]:
  """The statistics of finished rows: over seeds, against the baseline (raw and Holm
  verdicts, equivalence, power), with a ledger `directory` the paired bootstrap over dev
  examples, evaluation noise, gradient diagnostics (each section only when there is
  something to say)."""
  g, labels = ledger.groups(rows), metric_labels(rows)
  if not g:
    return []
  lines = [
    "## Over seeds",
    "",
    "Mean ± sample standard deviation over the seeds of each configuration (runs that "
    "differ only in `seed`)."
    + (
      f" Last columns: the paired difference of overall from `{baseline}` over the seeds "
      "both ran, its verdict and the minimum detectable effect (below)."
      if baseline in g
      else ""
    ),
    "",
    *seed_table(rows, baseline, margins=margins),
  ]
  if baseline is not None and baseline not in g:
    lines += ["", f"Baseline `{baseline}` has no finished run: no differences computed."]
  family = comparisons(rows, baseline, margins)
  if family:
    defaults = ledger.default_margins(ledger.task_metrics(labels))
    margin_text = ", ".join(
      f"{labels[c]} ±{m:g}" for c, m in {**defaults, **(margins or {})}.items()
    )
    lines += [
      "",
      f"## Difference from `{baseline}`",
      "",
      "Per metric: mean of (configuration − baseline) over the seeds both ran, its 95% "
      "Student-t interval (n − 1 degrees of freedom; the primary analysis, "
      "docs/results.md) and the verdict: **better** / **worse** when the paired t test "
      "rejects no difference (p < 0.05), else **equivalent within ±m** when the two "
      f"one-sided tests (TOST, p < 0.05) put the difference inside the margin ({margin_text}; "
      "study.json's `equivalence_margin`), else **inconclusive**. In parentheses, the "
      "verdict after Holm's adjustment over the study's family "
      f"({len(family)} tests: configurations × metrics), where it differs.",
      "",
      *table(
        ["configuration", "n", *labels.values()],
        [
          [
            f"`{name}`",
            str(family[name, "overall"]["n"]),
            *(f"{_diff(family[name, c])}: {_verdicts(family[name, c])}" for c in labels),
          ]
          for name in g
          if name != baseline
        ],
      ),
      "",
      "## Tests, equivalence and power",
      "",
      "Every test of the family: p of the paired t test and its Holm-adjusted p; p of "
      "TOST at the margin and its Holm-adjusted p; the minimum detectable effect (MDE: the "
      "true difference the paired t test at alpha 0.05 detects with power 0.8 at this n, "
      "given this comparison's sd of paired differences; exact, by the noncentral t); the "
      "seeds that would detect the observed mean difference with power 0.8, were it the "
      "true one.",
      "",
      *table(
        [
          "configuration",
          "metric",
          "mean diff",
          "sd of diffs",
          "p",
          "Holm p",
          "TOST p (±m)",
          "Holm TOST p",
          "MDE",
          "seeds needed",
        ],
        [
          [
            f"`{name}`",
            labels[col],
            number(c["mean"], "+.4f"),
            number(c["sd"] if c["n"] >= 2 else None),
            _p(c["p"]),
            _p(c["p_holm"]),
            f"{_p(c['p_tost'])} (±{c['margin']:g})",
            _p(c["p_tost_holm"]),
            number(c["mde"] if math.isfinite(c["mde"]) else None),
            str(c["n_needed"]) if c["n_needed"] else "-",
          ]
          for (name, col), c in family.items()
        ],
      ),
      "",
      *findings(rows, baseline, margins, directory),
    ]
  if directory is not None and family:
    lines += ["", *bootstrap_section(directory, rows, baseline)]
  noise = [
    [f"`{name}`", *(_noise(list(by_seed.values()), c) for c in labels)]
    for name, by_seed in g.items()
  ]
  if any(cell != "-" for r in noise for cell in r[1:]):
    lines += [
      "",
      "## Evaluation noise and training noise",
      "",
      "Per configuration: half-width of each run's bootstrap 95% interval (1,000 "
      "resamples of the dev examples, mean over seeds): the noise of the dev set alone; "
      "beside it, the sd over seeds: the noise of training.",
      "",
      *table(["configuration", *(f"{v}: bootstrap ± / seed sd" for v in labels.values())], noise),
    ]
  grad = [
    [f"`{name}`", *(_mean_sd([r.get(c) for r in by_seed.values()]) for c in ledger.GRAD_COLUMNS)]
    for name, by_seed in g.items()
  ]
  if any(cell != "-" for r in grad for cell in r[1:]):
    lines += [
      "",
      "## Gradient diagnostics",
      "",
      "Per configuration, mean ± sd over seeds of each run's mean over its logged steps "
      f"(`python -m mtl_jax.diagnose`), averaged over {_pairs(len(labels) - 1)}: cosine of the "
      "per-task gradients of the shared parameters, conflict rate (share of steps with "
      "cosine < 0); and over tasks: share of each task's gradient norm the method removed "
      "(- when the method reports none, e.g. sum).",
      "",
      *table(
        [
          "configuration",
          "mean pairwise cosine",
          "conflict rate",
          "share of gradient norm removed",
        ],
        grad,
      ),
    ]
  return lines


def _pairs(tasks: int) -> str:
  """'the three task pairs' of 3 tasks: the (unordered) pairs the gradient columns average."""
  n = tasks * (tasks - 1) // 2
  words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
  return "the task pair" if n == 1 else f"the {words[n] if n < len(words) else n} task pairs"


def _p(p: float) -> str:
  if not math.isfinite(p):
    return "-"
  return f"{p:.3f}" if p >= 0.001 else "<0.001"


def bootstrap_section(directory: str, rows: Sequence[dict], baseline: str) -> list[str]:
  """The paired bootstrap over dev examples (stats.paired_bootstrap) of every configuration
  against the baseline, from the rows' stored dev predictions (ledger.save_predictions),
  over the seeds where both have them; or why there is none."""
  g, columns = ledger.groups(rows), metric_labels(rows)
  metric = {c: m for m, c in ledger.metric_columns(ledger.task_metrics(columns)).items()}
  labels = ledger.load_labels(directory)
  head = ["## Paired bootstrap over dev examples", ""]
  preds = {
    (name, seed): ledger.load_predictions(directory, r)
    for name, by_seed in g.items()
    for seed, r in by_seed.items()
  }
  have = sum(p is not None for p in preds.values())
  if labels is None or not have:
    return head + [
      f"Not computed: none of the {len(preds)} rows has stored dev predictions "
      f"(`{ledger.PREDICTIONS}/`; the sweep stores them since the ledger has a `predictions` "
      "column, and these rows are older). They would come from each run's "
      "`WORKDIR/predictions/*-dev-output.csv`, and the workdirs of these rows are not on "
      "the machine that wrote this report; they are not retrained for it. The verdicts "
      "above rest on the seed-level t test alone."
    ]
  body = []
  for name, by_seed in g.items():
    if name == baseline:
      continue
    seeds = sorted(
      s for s in by_seed if preds[name, s] is not None and preds.get((baseline, s)) is not None
    )
    if not seeds:
      body.append([f"`{name}`", "-", *(["-"] * len(columns))])
      continue
    got = stats.paired_bootstrap(
      [preds[name, s] for s in seeds],
      [preds[baseline, s] for s in seeds],
      labels,
      ledger.task_metrics(columns),
    )
    cells = []
    for column in columns:
      b = got[metric[column]]
      cells.append(f"{b['mean']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}] p={_p(b['p'])}")
    body.append([f"`{name}`", ",".join(map(str, seeds)), *cells])
  return head + [
    f"Per configuration, over the seeds where it and `{baseline}` both have stored dev "
    "predictions: the mean over those seeds of (configuration − baseline), each metric "
    f"recomputed on {stats.RESAMPLES:,} resamples of the dev examples, the same resampled "
    "examples for both configurations and every seed; 95% percentile interval and "
    "bootstrap p. The noise of the dev sets, for these trained models (secondary: "
    "docs/results.md).",
    "",
    *table(["configuration", "seeds", *columns.values()], body),
  ]


def ladder_table(directory: str, rows: Sequence[dict], parents: dict[str, str]) -> list[str]:
  """A line per rung of the ladder (mtl_jax.study.ladder): each metric's difference from the
  rung it builds on, with the paired bootstrap's 95% interval where there are predictions."""

  def cell(step: dict, column: str) -> str:
    if step["bootstrap"] is None:
      return f"{step['diff'][column]:+.4f}"
    b = step["bootstrap"][column]
    return f"{b['mean']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}]"

  labels = metric_labels(rows)
  body = [
    [
      f"`{s['rung']}`",
      f"`{s['parent']}`",
      ",".join(map(str, s["seeds"])),
      *(cell(s, c) for c in labels),
    ]
    for s in ladder.steps(directory, rows, parents)
  ]
  return table(["rung", "builds on", "seeds", *labels.values()], body)


def ladder_section(directory: str, rows: Sequence[dict], parents: dict[str, str]) -> list[str]:
  """report.md's "Ladder" section ([] for a study without a ladder)."""
  if not parents:
    return []
  waiting = [r for r in parents if r not in ledger.groups(rows)]
  return [
    "## Ladder",
    "",
    "Each rung against the rung it builds on (study.json's `ladder`): the mean over the "
    "seeds both ran of (rung − the rung it builds on) for each dev metric, with the 95% "
    f"interval of the paired bootstrap over dev examples ({stats.RESAMPLES:,} resamples, "
    "the same examples for both; docs/results.md) where both have stored predictions. "
    "At one seed the interval is the noise of the dev sets for these two trained models, "
    "not the noise of training: a screen, not a verdict.",
    "",
    *ladder_table(directory, rows, parents),
    *(["", f"Not run yet: {', '.join(f'`{r}`' for r in waiting)}."] if waiting else []),
  ]


def _noise(rows: list[dict], column: str) -> str:
  halves = [
    (r[f"{column}_hi"] - r[f"{column}_lo"]) / 2
    for r in rows
    if r.get(f"{column}_lo") is not None and r.get(f"{column}_hi") is not None
  ]
  _, sd, _ = stats.mean_sd([r.get(column) for r in rows])
  if not halves:
    return "-"
  return f"±{sum(halves) / len(halves):.4f} / {number(sd)}"


def provenance(directory: str, classified: dict) -> list[str]:
  """Which commits the rows came from (and whether their training code differs), reruns
  that moved the metrics, rows left out because their configuration changed."""
  current = classified["current"]
  lines = ["## Provenance", "", *fingerprints(current), ""]
  commits = collections.Counter(r["commit"] for r in current)
  lines += ["Commits the rows were trained at:", ""]
  lines += [f"- `{c}`: {n} row{'s' * (n != 1)}" for c, n in commits.items()]
  if len(commits) > 1:
    first, *others = commits
    same = [ledger.same_code(first, c) for c in others]
    if all(s is True for s in same):
      lines += [
        "",
        "The rows come from different commits, whose training code "
        f"({', '.join(ledger.CODE_PATHS)}) is identical by `git diff` (a weaker check "
        "than the fingerprints: a change of these files may or may not change training).",
      ]
    else:
      lines += [
        "",
        "**The rows come from different versions of the training code** "
        f"({', '.join(ledger.CODE_PATHS)} differ between these commits by `git diff`, or "
        "cannot be compared here): "
        + (
          "whether training differs is what the fingerprints tell."
          if all(_fingerprint_parts(r) for r in current)
          else "rows without a fingerprint cannot tell whether their training differs."
        ),
      ]
  if classified["reruns"]:
    lines += ["", "Reruns of ledger rows (the statistics use the first run):", ""]
    for rerun, original in classified["reruns"]:
      labels = metric_labels([rerun, original])
      diffs = {
        labels[c]: rerun[c] - original[c]
        for c in labels
        if rerun.get(c) is not None and original.get(c) is not None
      }
      moved = {k: d for k, d in diffs.items() if d != 0}
      what = (
        "identical metrics"
        if not moved
        else "**different metrics**: " + ", ".join(f"{k} {d:+.4f}" for k, d in moved.items())
      )
      a, b = rerun.get("fingerprint"), original.get("fingerprint")
      same = "" if not (a and b) else "; same fingerprint" if a == b else "; **other fingerprint**"
      lines.append(
        f"- `{rerun['name']}` seed {rerun['seed']} (commit `{rerun['commit'][:12]}`, "
        f"first run `{original['commit'][:12]}`{same}): {what}"
      )
  if classified["stale"]:
    lines += ["", "Rows not used (their configuration's experiment keys have changed since):", ""]
    lines += [
      f"- `{r['name']}` seed {r['seed']} ({r['status']}): {why}" for r, why in classified["stale"]
    ]
  return lines


def _fingerprint_parts(row: dict) -> tuple[str, str] | None:
  """(step hash, batches/dropout hashes) of a row's fingerprint; None for older rows."""
  fp = row.get("fingerprint") or ""
  step, _, data = fp.partition("/")
  return (step, data) if step and data else None


def fingerprints(rows: Sequence[dict]) -> list[str]:
  """Rows grouped by training fingerprint (mtl_jax.study.fingerprint): per configuration
  its train step hashes, per seed its batches/dropout hashes across configurations."""
  lines = [
    "Training fingerprints (`mtl_jax/study/fingerprint.py`: hash of the lowered train "
    "step / of the first batches / of the dropout keys, from each row's config), by "
    "configuration (one step hash: its seeds trained one computation) and by seed (one "
    "batches/dropout hash: every configuration trained that seed on the same examples with "
    "the same dropout keys, so the pairing of the differences holds). Rows appended before "
    'the ledger recorded fingerprints are "unknown".',
    "",
  ]
  by_name: dict[str, collections.Counter] = {}
  by_seed: dict[int, collections.Counter] = {}
  for r in rows:
    parts = _fingerprint_parts(r)
    by_name.setdefault(r["name"], collections.Counter())[parts[0] if parts else "unknown"] += 1
    by_seed.setdefault(r["seed"], collections.Counter())[parts[1] if parts else "unknown"] += 1

  def cell(counter: collections.Counter) -> str:
    return ", ".join(
      f"`{k}` ({n})" if k != "unknown" else f"unknown ({n})" for k, n in counter.items()
    )

  lines += table(
    ["configuration", "train step (rows)"], [[f"`{n}`", cell(c)] for n, c in by_name.items()]
  )
  lines += [
    "",
    *table(
      ["seed", "batches/dropout (rows)"], [[str(s), cell(c)] for s, c in sorted(by_seed.items())]
    ),
  ]
  split = [n for n, c in by_name.items() if len([k for k in c if k != "unknown"]) > 1]
  split += [f"seed {s}" for s, c in by_seed.items() if len([k for k in c if k != "unknown"]) > 1]
  if split:
    lines += [
      "",
      f"**Rows of {', '.join(split)} were trained differently** (several fingerprints): "
      "their differences may come from the code, not the configuration.",
    ]
  return lines


def _ci(row: dict, column: str) -> str:
  lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
  cell = number(row.get(column))
  return cell + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def write_ledger_report(directory: str, missing: Sequence[str] = ()) -> str:
  """Writes directory/report.md from the ledger (and the PNGs already in directory/plots);
  `missing`: (configuration, seed) the last sweep planned but did not finish."""
  classified = ledger.classify(directory, ledger.read(directory))
  study = ledger.read_study(directory)
  rows = classified["current"]
  name = os.path.basename(os.path.normpath(directory))
  lines = [
    f"# Study `{name}`",
    "",
    f"Generated {datetime.date.today()} from `results.csv` ({len(rows)} runs used) by "
    f"`python -m mtl_jax.ledger report {directory}` or the sweep:",
    "",
    f"`{study['command'] or 'python -m mtl_jax.sweep ... --ledger ' + directory}`",
    "",
  ]
  if missing:
    lines += [f"Not in the ledger yet: {', '.join(missing)}.", ""]
  lines += study_sections(rows, study["baseline"], study["equivalence_margin"], directory)
  lines += ["", *ladder_section(directory, rows, study["ladder"])] if study["ladder"] else []
  plots = os.path.join(directory, "plots")
  pngs = sorted(p for p in os.listdir(plots) if p.endswith(".png")) if os.path.isdir(plots) else []
  if pngs:
    lines += [
      "",
      "## Training curves",
      "",
      "Mean over the seeds of each configuration, of the runs whose workdirs were on the "
      "machine that wrote this report.",
      "",
    ]
    lines += [f"![{p[:-4]}](plots/{p})" for p in pngs]
  lines += ["", *provenance(directory, classified)]
  lines += [
    "",
    "## Runs",
    "",
    "Dev metrics with each run's bootstrap 95% interval; `command` reproduces the run "
    "(add `--workdir`).",
    "",
  ]
  labels = metric_labels(rows)
  machines, split = _machines(rows, study)
  on = lambda r: f" ({_machine_tag(r, machines, study)})" if split else ""
  lines += table(
    ["configuration", "seed", *labels.values(), "steps", "wall time", "commit", "command"],
    [
      [
        f"`{r['name']}`",
        str(r["seed"]),
        *(_ci(r, c) for c in labels),
        number(r["steps"], "d"),
        duration(r["seconds"]) + (on(r) if r.get("seconds") is not None else ""),
        f"`{r['commit'][:12]}`",
        f"`{r['command']}`",
      ]
      for r in rows
    ],
  )
  path = os.path.join(directory, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


# --- Sweep reports: a sweep's workdir, and a ledger's plots and report


def _curves(runs: Sequence, out: str, by_name: bool = False) -> dict[str, str]:
  """{plot name: path}: training loss per task (of the runs' config.task_order) and dev
  overall against the step, one line per run, or with `by_name` the mean over the seeds of
  each configuration."""
  logs = {}
  for run in runs:
    try:
      logs[run] = diagnose.read_log(run.workdir)
    except diagnose.DiagnoseError:  # Never got to train: nothing to draw.
      continue
  os.makedirs(out, exist_ok=True)

  def lines(series) -> dict:  # series(rows, dev) -> (steps, values) or None.
    grouped = collections.defaultdict(list)
    for run, log in logs.items():
      line = series(*log)
      if line is not None and len(line[0]):
        grouped[run.name if by_name else run.label].append(line)
    return {
      label: (ls[0][0], np.mean([v for _, v in ls], axis=0))
      if len({len(s) for s, _ in ls}) == 1
      else ls[0]
      for label, ls in grouped.items()
    }

  paths = {}
  for task in dict.fromkeys(t for run in logs for t in run.config.task_order):  # Task order.
    key = f"task_loss/{task}"  # Every row's, or under a one-task schedule, its task's rows'.
    loss = lines(
      lambda rows, _: ([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
    )
    if loss:
      paths[f"{task} loss"] = diagnose.line_plot(
        os.path.join(out, f"loss_{task}.png"), f"Training loss: {task}", "loss", loss
      )
  dev = lines(
    lambda _, d: (
      [r["step"] for r in d if "dev/overall" in r],
      [r["dev/overall"] for r in d if "dev/overall" in r],
    )
  )
  if any(len(steps) > 1 for steps, _ in dev.values()):
    paths["dev overall"] = diagnose.line_plot(
      os.path.join(out, "dev_overall.png"), "Dev overall score", "overall", dev
    )
  return paths


def _diagnostics(runs: Sequence) -> dict[str, dict]:
  """{run label: diagnose summary}, writing each run's diagnose plots in its workdir."""
  summaries = {}
  for run in runs:
    try:
      grad, dev_rows = diagnose.read_metrics(run.workdir)
    except diagnose.DiagnoseError:  # Never trained, or no shared gradients (heads only).
      continue
    output = os.path.join(run.workdir, "diagnostics")
    os.makedirs(output, exist_ok=True)
    diagnose.plot(grad, dev_rows, output)
    summaries[run.label] = diagnose.summarize(grad, dev_rows)
  return summaries


def write_sweep_report(
  runs: Sequence,
  rows: list[dict],
  workdir: str,
  command: str,
  columns: Sequence[str],
  baseline: str | None = None,
) -> list[str]:
  """Writes WORKDIR/results.csv (`columns`), report.md and the PNGs of a sweep's runs
  (mtl_jax.sweep.Run); returns the paths of the first two."""
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, "results.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)

  plots = _curves(runs, os.path.join(workdir, "plots"))
  summaries = _diagnostics(runs)
  link = lambda path: os.path.relpath(path, workdir)
  counts = collections.Counter(r["status"] for r in rows)
  best = max((r["overall"] for r in rows if r["overall"] is not None), default=None)
  lines = [
    "# Sweep report",
    "",
    f"`{command}`",
    "",
    f"{datetime.datetime.now():%Y-%m-%d %H:%M}: {len(rows)} runs, "
    + ", ".join(f"{n} {s}" for s, n in counts.items())
    + ". "
    "Dev metrics of each run's last step [bootstrap 95% interval over the dev examples]; "
    "wall time of the process that finished it (loading and compilation included; "
    "* = resumed from a checkpoint).",
    "",
  ]
  body, labels = [], metric_labels(rows)
  for r in rows:
    cells = [_ci(r, m) for m in labels]
    if best is not None and r["overall"] == best:
      cells[-1] = f"**{cells[-1]}**"
    resumed = "*" if r.get("first_step") else ""
    body.append(
      [
        f"`{r['run']}`",
        r["status"],
        *cells,
        number(r["steps"], "d"),
        duration(r["seconds"]) + resumed,
        number(r.get("trainable_params"), ",d"),
      ]
    )
  lines += table(
    ["run", "status", *labels.values(), "steps", "wall time", "trainable params"], body
  )
  failed = [r for r in rows if r["status"] == "failed"]
  if failed:
    lines += ["", "Failed:", ""] + [
      f"- `{r['run']}`: {r['error']} ([log]({r['run']}/train.log))" for r in failed
    ]
  if len({r.seed for r in runs}) > 1 or baseline is not None:
    lines += ["", *study_sections(rows, baseline)]
  if plots:
    lines += ["", "## Training curves", ""] + [f"![{name}]({link(p)})" for name, p in plots.items()]
  if summaries:
    pairs = list(next(iter(summaries.values()))["pairs"])
    lines += [
      "",
      "## Gradient conflict",
      "",
      "Per pair of tasks, over the logged steps: mean cosine of the per-task gradients of "
      "the shared parameters / share of steps where it is negative "
      "(`python -m mtl_jax.diagnose`).",
      "",
    ]
    lines += table(
      ["run", *pairs, "plots"],
      [
        [
          f"`{name}`",
          *(
            f"{number(s['pairs'][p]['mean_cosine'], '+.3f')} / "
            f"{number(s['pairs'][p]['conflict_rate'], '.2f')}"
            for p in pairs
          ),
          f"[cosine]({name}/diagnostics/cosine.png), "
          f"[conflict rate]({name}/diagnostics/conflict_rate.png)",
        ]
        for name, s in summaries.items()
      ],
    )
  lines += ["", "## Runs", ""] + table(
    ["run", "command"], [[f"`{run.label}`", f"`{run.display_command()}`"] for run in runs]
  )
  report_path = os.path.join(workdir, "report.md")
  with open(report_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return [report_path, csv_path]


def write_ledger(runs: Sequence, ledger_dir: str) -> str:
  """The ledger's plots (mean over seeds, from the runs whose workdirs are here) and
  report.md (from all its rows); returns the report's path."""
  _curves(runs, os.path.join(ledger_dir, "plots"), by_name=True)
  have = {
    (r["name"], r["seed"]) for r in ledger.classify(ledger_dir, ledger.read(ledger_dir))["current"]
  }
  missing = [f"`{run.name}` seed {run.seed}" for run in runs if (run.name, run.seed) not in have]
  return write_ledger_report(ledger_dir, missing)
