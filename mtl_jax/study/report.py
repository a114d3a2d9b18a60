"""Reports of sweeps and studies: runs grouped by seed, differences from a baseline with
their intervals and verdicts, evaluation noise, gradient diagnostics, provenance, plots.

The sections are functions of ledger-style rows (mtl_jax.ledger.COLUMNS: name, seed,
sst_acc, ..., overall_lo, grad_cosine, commit, command) to lines of markdown, so a sweep's
report, a ledger's report.md and README's tables say the same numbers in the same words;
the writers at the end put them in files with the training curves.
"""

from __future__ import annotations

import collections
import csv
import datetime
import os
from collections.abc import Sequence

import numpy as np

from mtl_jax.study import ledger, stats
from mtl_jax.tasks import TASKS
from mtl_jax.tools import diagnose

LABELS = {
  "sst_acc": "SST acc",
  "quora_acc": "Quora acc",
  "sts_pearson": "STS Pearson",
  "overall": "overall",
}


def table(header: list[str], body: list[list[str]]) -> list[str]:
  return [
    "| " + " | ".join(header) + " |",
    "|" + " --- |" * len(header),
    *("| " + " | ".join(r) + " |" for r in body),
  ]


def number(v, fmt: str = ".4f") -> str:
  return "-" if v is None else format(v, fmt)


def duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  minutes, s = divmod(round(seconds), 60)
  return f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def groups(rows: Sequence[dict]) -> dict[str, dict[int, dict]]:
  """{name: {seed: row}} of the finished rows (overall known), names in first-seen order."""
  out: dict[str, dict[int, dict]] = {}
  for r in rows:
    if r.get("overall") is not None:
      out.setdefault(r["name"], {}).setdefault(r["seed"], r)
  return out


def _mean_sd(values: list) -> str:
  mean, sd, _ = stats.mean_sd(values)
  return "-" if mean is None else f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def _diff(d: dict) -> str:
  if d["n"] < 2:
    return f"{number(d['mean'], '+.4f')} (n={d['n']}): n too small"
  return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]: {d['verdict']}"


def _paired(by_seed: dict[int, dict], base: dict[int, dict], column: str) -> dict:
  return stats.paired_difference(
    {s: r[column] for s, r in by_seed.items()}, {s: r[column] for s, r in base.items()}
  )


def seed_table(rows: Sequence[dict], baseline: str | None, overall_only: bool = True) -> list[str]:
  """Per configuration: seeds, mean ± sample sd of every metric and, with a baseline, the
  paired difference of overall from it (95% t interval, n - 1 dof) and its verdict."""
  g = groups(rows)
  header = ["configuration", "n", "seeds", *LABELS.values()]
  if baseline in g:
    header.append(f"overall − {baseline} (95% CI)")
  body = []
  for name, by_seed in g.items():
    cells = [
      f"`{name}`",
      str(len(by_seed)),
      ",".join(map(str, sorted(by_seed))),
      *(_mean_sd([r[c] for r in by_seed.values()]) for c in LABELS),
    ]
    if baseline in g:
      cells.append(
        "baseline" if name == baseline else _diff(_paired(by_seed, g[baseline], "overall"))
      )
    body.append(cells)
  return table(header, body)


def study_sections(rows: Sequence[dict], baseline: str | None) -> list[str]:
  """The statistics of finished rows: over seeds, against the baseline, evaluation noise,
  gradient diagnostics (each section only when there is something to say)."""
  g = groups(rows)
  if not g:
    return []
  lines = [
    "## Over seeds",
    "",
    "Mean ± sample standard deviation over the seeds of each configuration (runs that "
    "differ only in `seed`)."
    + (
      f" Last column: the paired difference from `{baseline}` over the seeds both ran."
      if baseline in g
      else ""
    ),
    "",
    *seed_table(rows, baseline),
  ]
  if baseline is not None and baseline not in g:
    lines += ["", f"Baseline `{baseline}` has no finished run: no differences computed."]
  if baseline in g and len(g) > 1:
    lines += [
      "",
      f"## Difference from `{baseline}`",
      "",
      "Per metric: mean of (configuration − baseline) over the seeds both ran, its 95% "
      "Student-t interval (n − 1 degrees of freedom) and the verdict: better / worse when "
      'the interval excludes 0, "no difference detected" when it contains 0 (not a '
      'proof of equality: more seeds would narrow it), "n too small" below two seeds.',
      "",
      *table(
        ["configuration", "n", *LABELS.values()],
        [
          [
            f"`{name}`",
            str(_paired(by_seed, g[baseline], "overall")["n"]),
            *(_diff(_paired(by_seed, g[baseline], c)) for c in LABELS),
          ]
          for name, by_seed in g.items()
          if name != baseline
        ],
      ),
    ]
  noise = [
    [f"`{name}`", *(_noise(list(by_seed.values()), c) for c in LABELS)]
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
      *table(["configuration", *(f"{v}: bootstrap ± / seed sd" for v in LABELS.values())], noise),
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
      "(`python -m mtl_jax.diagnose`), averaged over the three task pairs: cosine of the "
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


def _noise(rows: list[dict], column: str) -> str:
  halves = [
    (r[f"{column}_hi"] - r[f"{column}_lo"]) / 2
    for r in rows
    if r.get(f"{column}_lo") is not None and r.get(f"{column}_hi") is not None
  ]
  _, sd, _ = stats.mean_sd([r[column] for r in rows])
  if not halves:
    return "-"
  return f"±{sum(halves) / len(halves):.4f} / {number(sd)}"


def provenance(directory: str, classified: dict) -> list[str]:
  """Which commits the rows came from (and whether their training code differs), reruns
  that moved the metrics, rows left out because their configuration changed."""
  current = classified["current"]
  commits = collections.Counter(r["commit"] for r in current)
  lines = ["## Provenance", ""]
  lines += [f"- `{c}`: {n} row{'s' * (n != 1)}" for c, n in commits.items()]
  if len(commits) > 1:
    first, *others = commits
    same = [ledger.same_code(first, c) for c in others]
    if all(s is True for s in same):
      lines += [
        "",
        "The rows come from different commits, whose training code "
        f"({', '.join(ledger.CODE_PATHS)}) is identical.",
      ]
    else:
      lines += [
        "",
        "**The rows come from different versions of the training code** "
        f"({', '.join(ledger.CODE_PATHS)} differ between these commits, or cannot be "
        "compared here): differences between configurations may come from the code.",
      ]
  if classified["reruns"]:
    lines += ["", "Reruns of ledger rows (the statistics use the first run):", ""]
    for rerun, original in classified["reruns"]:
      diffs = {
        LABELS[c]: rerun[c] - original[c]
        for c in LABELS
        if rerun[c] is not None and original[c] is not None
      }
      moved = {k: d for k, d in diffs.items() if d != 0}
      what = (
        "identical metrics"
        if not moved
        else "**different metrics**: " + ", ".join(f"{k} {d:+.4f}" for k, d in moved.items())
      )
      lines.append(
        f"- `{rerun['name']}` seed {rerun['seed']} (commit `{rerun['commit'][:12]}`, "
        f"first run `{original['commit'][:12]}`): {what}"
      )
  if classified["stale"]:
    lines += ["", "Rows not used (their configuration's experiment keys have changed since):", ""]
    lines += [
      f"- `{r['name']}` seed {r['seed']} ({r['status']}): {why}" for r, why in classified["stale"]
    ]
  return lines


def _ci(row: dict, column: str) -> str:
  lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
  cell = number(row[column])
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
  lines += study_sections(rows, study["baseline"])
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
  lines += table(
    ["configuration", "seed", *LABELS.values(), "steps", "wall time", "commit", "command"],
    [
      [
        f"`{r['name']}`",
        str(r["seed"]),
        *(_ci(r, c) for c in LABELS),
        number(r["steps"], "d"),
        duration(r["seconds"]),
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
  """{plot name: path}: training loss per task and dev overall against the step, one line
  per run, or with `by_name` the mean over the seeds of each configuration."""
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
  for k, task in enumerate(TASKS):
    loss = lines(
      lambda rows, _: (
        ([r["step"] for r in rows], diagnose.task_columns(rows, "task_loss/")[:, k])
        if rows
        else None
      )
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
  body = []
  for r in rows:
    cells = [_ci(r, m) for m in LABELS]
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
    ["run", "status", *LABELS.values(), "steps", "wall time", "trainable params"], body
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
