"""Per-task gradient diagnostics of a training run: do the tasks' gradients conflict?

  python -m mtl_jax.diagnose --workdir=WORKDIR [--output=DIR]
  python -m mtl_jax.diagnose --workdir=WORKDIR --from_checkpoint [--batches=8] [--output=DIR]
  python -m mtl_jax.diagnose --workdir=WORKDIR --groups [--S=0.0] [--output=DIR]

By default reads WORKDIR/metrics.jsonl and writes PNG plots (pairwise cosines, gradient
norms, conflict rate, share of each task's gradient removed by the method, method stats,
losses, dev metrics), prints a summary table and writes summary.json to --output
(default WORKDIR/diagnostics). With --from_checkpoint it measures the same statistics
afresh on the run's latest checkpoint, over the next --batches steps, and writes
checkpoint_summary.json instead of plots. A mode of its own, not implied by the checkpoints
a finished run holds, because it is slow (a compile, and a step per batch). With --groups
it asks where in the network the tasks conflict: from the per-group cosines the train step
logs (group_cos/<group>/<task>-<task>) it draws group_cosine.png (one panel per task pair,
groups x logged steps) and prints each group's S-conflict score (Recon, Shi et al. ICLR
2023: the number of (logged step, task pair) with cosine below --S), writing
group_summary.json.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np
from absl import app, flags

from mtl_jax.tools import cli


def task_names(rows: list[dict]) -> tuple[str, ...]:
  """The run's tasks, in task-axis order, from its logged rows' per-task keys: a gradient
  row names every task (grad/grad_norm/<task>, in the order the trainer logs them); without
  one, the tasks of the rows' task_loss/<task> keys, first logged first (a one-task
  schedule's row names its step's task alone)."""
  for r in rows:
    names = tuple(k[len("grad/grad_norm/") :] for k in r if k.startswith("grad/grad_norm/"))
    if names:
      return names
  losses = (k[len("task_loss/") :] for r in rows for k in r if k.startswith("task_loss/"))
  return tuple(dict.fromkeys(losses))


def task_pairs(names: tuple[str, ...]) -> list[tuple[int, int]]:
  """The (i, j), i < j, pairs of task positions."""
  return list(itertools.combinations(range(len(names)), 2))


FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory (metrics.jsonl, checkpoints/).", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Output directory (default WORKDIR/diagnostics).", flag_values=FLAGS
)
_FROM_CHECKPOINT = flags.DEFINE_bool(
  "from_checkpoint",
  False,
  "Measure afresh on the run's latest checkpoint instead of reading metrics.jsonl.",
  flag_values=FLAGS,
)
_BATCHES = flags.DEFINE_integer(
  "batches",
  8,
  "With --from_checkpoint: the steps to measure and average over.",
  lower_bound=1,
  flag_values=FLAGS,
)
_GROUPS = flags.DEFINE_bool(
  "groups",
  False,
  "Per parameter group instead (the train step's group_cos/ metrics): a heatmap of each "
  "task pair's cosines (groups x logged steps, group_cosine.png) and each group's "
  "S-conflict score (Recon, Shi et al. ICLR 2023).",
  flag_values=FLAGS,
)
_S = flags.DEFINE_float(
  "S",
  0.0,
  "With --groups: the S of the S-conflict score, the number of (logged step, task pair) "
  "whose cosine is below S (Recon's cal_conflict_scores default: 0.0).",
  flag_values=FLAGS,
)
cli.mark_required(FLAGS, ["workdir"])


class DiagnoseError(ValueError):
  """A workdir that cannot be diagnosed; the message says why, in one line."""


# --- Reading: metrics.jsonl rows (or rows measured on a checkpoint) -> arrays


def read_log(workdir: str) -> tuple[list[dict], list[dict]]:
  """(training rows, dev rows) of a workdir's metrics.jsonl, sorted by step; a resumed
  run's repeats: last wins."""
  if not os.path.isdir(workdir):
    raise DiagnoseError(f"workdir {workdir} not found")
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise DiagnoseError(f"{path} not found: is {workdir} a training workdir?")
  rows, dev = {}, {}
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # A line cut short by a killed run.
        continue
      if "loss" in row or "grad/cosine" in row:
        rows[row["step"]] = row
      if any(k.startswith("dev/") for k in row):
        dev[row["step"]] = row
  return [rows[s] for s in sorted(rows)], [dev[s] for s in sorted(dev)]


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  """(gradient rows, dev rows) of a workdir, sorted by step; a resumed run's repeats: last wins."""
  rows, dev = read_log(workdir)
  grad = [r for r in rows if "grad/cosine" in r]
  if not grad:
    raise DiagnoseError(
      f"{os.path.join(workdir, 'metrics.jsonl')} has no gradient rows "
      "(grad/cosine): nothing to diagnose (a run whose train.schedule trains "
      "one task per step logs none; --from_checkpoint measures them on its latest "
      "checkpoint)"
    )
  return grad, dev


def method_stat_names(rows: list[dict]) -> list[str]:
  """Names <stat> of the per-task 'method/<stat>/<task>' keys (any method, any prefix)."""
  names = {
    k[len("method/") : -len(t) - 1]
    for r in rows
    for k in r
    for t in task_names(rows)
    if k.startswith("method/") and k.endswith("/" + t)
  }
  return sorted(names)


def task_columns(rows: list[dict], prefix: str) -> np.ndarray:
  """[N, T] of prefix + task, NaN where a row lacks it."""
  names = task_names(rows)
  return np.array([[r.get(prefix + t, np.nan) for t in names] for r in rows], np.float64)


def arrays(rows: list[dict]) -> dict:
  """steps [N], cosine [N, T, T], norm / loss [N, T], method {stat: [N, T]}."""
  return {
    "steps": np.array([r["step"] for r in rows]),
    "cosine": np.array([r["grad/cosine"] for r in rows], np.float64),
    "norm": task_columns(rows, "grad/grad_norm/"),
    "loss": task_columns(rows, "task_loss/"),
    "method": {s: task_columns(rows, f"method/{s}/") for s in method_stat_names(rows)},
  }


def removed_fraction(a: dict) -> np.ndarray | None:
  """[N, T] share of each task's gradient norm removed by the method, if it reports it."""
  name = next((s for s in a["method"] if s.split(":")[-1] == "removed_norm"), None)
  if name is None:
    return None
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(a["norm"] > 0, a["method"][name] / a["norm"], np.nan)


# --- Summary


def _mean(x: np.ndarray) -> float | None:
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else None


def summarize(rows: list[dict], dev_rows: list[dict] | None = None) -> dict:
  """Per pair: mean cosine, mean |cosine|, conflict rate; per task: norms, removal, losses."""
  a, names = arrays(rows), task_names(rows)
  pairs = {}
  for i, j in task_pairs(names):
    c = a["cosine"][:, i, j]
    pairs[f"{names[i]}-{names[j]}"] = {
      "mean_cosine": _mean(c),
      "mean_abs_cosine": _mean(np.abs(c)),
      "conflict_rate": float(np.mean(c < 0)),
    }
  removed = removed_fraction(a)
  tasks = {}
  for k, t in enumerate(names):
    losses = a["loss"][:, k][np.isfinite(a["loss"][:, k])]
    tasks[t] = {
      "mean_grad_norm": _mean(a["norm"][:, k]),
      "mean_removed_fraction": None if removed is None else _mean(removed[:, k]),
      "mean_loss": _mean(losses),
      "final_loss": float(losses[-1]) if losses.size else None,
      **{f"mean_{s}": _mean(v[:, k]) for s, v in a["method"].items()},
    }
  dev = {k: v for k, v in dev_rows[-1].items() if k.startswith("dev/")} if dev_rows else {}
  return {
    "num_rows": len(rows),
    "first_step": int(a["steps"][0]),
    "last_step": int(a["steps"][-1]),
    "pairs": pairs,
    "tasks": tasks,
    "final_dev": dev,
  }


def _fmt(v) -> str:
  return "-" if v is None else f"{v:.4f}"


def _table(header: list[str], body: list[list[str]]) -> str:
  widths = [max(len(r[c]) for r in [header] + body) for c in range(len(header))]
  return "\n".join(
    "  ".join(x.ljust(w) if c == 0 else x.rjust(w) for c, (x, w) in enumerate(zip(r, widths)))
    for r in [header] + body
  )


def format_summary(s: dict) -> str:
  """The summary as plain-text tables: pairs, tasks, final dev metrics."""
  out = [
    f"{s['num_rows']} gradient measurements, steps {s['first_step']}..{s['last_step']}",
    "",
    _table(
      ["pair", "mean cos", "mean |cos|", "conflict rate"],
      [
        [p, _fmt(v["mean_cosine"]), _fmt(v["mean_abs_cosine"]), _fmt(v["conflict_rate"])]
        for p, v in s["pairs"].items()
      ],
    ),
    "",
  ]
  keys = [
    k
    for k in next(iter(s["tasks"].values()))  # Without the columns no task has.
    if any(v[k] is not None for v in s["tasks"].values())
  ]
  out.append(
    _table(
      ["task"] + [k.replace("_", " ") for k in keys],
      [[t] + [_fmt(v[k]) for k in keys] for t, v in s["tasks"].items()],
    )
  )
  if s["final_dev"]:
    out += ["", _table(["dev metric", "final"], [[k, _fmt(v)] for k, v in s["final_dev"].items()])]
  return "\n".join(out)


# --- Plots


def line_plot(
  path: str,
  title: str,
  ylabel: str,
  lines: dict,
  log: bool = False,
  zero: bool = False,
  ylim: tuple | None = None,
) -> str:
  """Writes a PNG of lines {label: (steps, values[, plot kwargs])} against the step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 4.5))
  for label, (x, y, *style) in lines.items():
    ax.plot(
      x,
      y,
      label=label,
      **(style[0] if style else {"marker": "o" if len(x) < 20 else None, "markersize": 4}),
    )
  if zero:
    ax.axhline(0.0, color="black", linewidth=0.8)
  if log:
    ax.set_yscale("log")
  ax.set(title=title, xlabel="step", ylabel=ylabel, ylim=ylim)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot(rows: list[dict], dev_rows: list[dict], output: str) -> list[str]:
  """Writes the PNGs (those the rows have data for) and returns their paths."""
  a, paths = arrays(rows), []
  steps = a["steps"]
  tasks, pairs = task_names(rows), task_pairs(task_names(rows))

  def figure(name: str, *args, **kwargs):
    paths.append(line_plot(os.path.join(output, name), *args, **kwargs))

  names = {(i, j): f"{tasks[i]}–{tasks[j]}" for i, j in pairs}
  figure(
    "cosine.png",
    "Pairwise cosine of per-task gradients (shared params)",
    "cosine",
    {names[p]: (steps, a["cosine"][:, p[0], p[1]]) for p in pairs},
    zero=True,
  )
  norm_ok = np.isfinite(a["norm"]).any(axis=0) & (np.nan_to_num(a["norm"]) > 0).any(axis=0)
  figure(
    "grad_norm.png",
    "Per-task gradient norm (shared params)",
    "||g_task||",
    {t: (steps, a["norm"][:, k]) for k, t in enumerate(tasks) if norm_ok[k]},
    log=True,
  )
  window = min(20, max(5, len(steps) // 5))
  conflict = (a["cosine"] < 0).astype(np.float64)
  rates = {}
  for n, p in enumerate(pairs):
    c, color = conflict[:, p[0], p[1]], f"C{n}"
    rates[f"{names[p]} (all steps so far)"] = (steps, _rolling(c, len(c)), {"color": color})
    rates[f"{names[p]} (last {window})"] = (
      steps,
      _rolling(c, window),
      {"color": color, "alpha": 0.4, "linestyle": "--"},
    )
  figure(
    "conflict_rate.png",
    "Conflict rate: fraction of logged steps with cos < 0",
    "conflict rate",
    rates,
    ylim=(-0.03, 1.03),
  )
  removed = removed_fraction(a)
  if removed is not None:
    figure(
      "removed_fraction.png",
      "Share of each task's gradient removed by the method",
      "removed_norm / grad_norm",
      {t: (steps, removed[:, k]) for k, t in enumerate(tasks)},
    )
  for s, v in a["method"].items():
    figure(
      f"method_{s.replace('/', '_').replace(':', '_')}.png",
      f"Method stat: {s}",
      s,
      {t: (steps, v[:, k]) for k, t in enumerate(tasks)},
    )
  if np.isfinite(a["loss"]).any():
    figure(
      "loss.png",
      "Per-task training loss",
      "loss",
      {t: (steps, a["loss"][:, k]) for k, t in enumerate(tasks)},
    )
  dev_keys = sorted({k for r in dev_rows for k in r if k.startswith("dev/")})
  if dev_keys:
    figure(
      "dev.png",
      "Dev metrics",
      "metric",
      {
        k: ([r["step"] for r in dev_rows if k in r], [r[k] for r in dev_rows if k in r])
        for k in dev_keys
      },
    )
  return paths


def _rolling(x: np.ndarray, window: int) -> np.ndarray:
  """Mean of the last `window` values at each position (fewer at the start)."""
  c = np.concatenate([[0.0], np.cumsum(x)])
  n = np.arange(1, len(x) + 1)
  lo = np.maximum(n - window, 0)
  return (c[n] - c[lo]) / (n - lo)


# --- Per-group mode: where in the network do the tasks conflict?

GROUP_COS = "group_cos/"


def group_arrays(rows: list[dict]) -> dict:
  """steps [N], groups (network order), pairs ("a-b"), cosine [G, P, N] (NaN where a row
  lacks it) from the rows' group_cos/<group>/<a>-<b> keys."""
  from mtl_jax.models.multitask import group_sort_key

  keys = {k[len(GROUP_COS) :].rpartition("/") for r in rows for k in r if k.startswith(GROUP_COS)}
  groups = sorted({g for g, _, _ in keys}, key=group_sort_key)
  names = task_names(rows)
  order = {f"{names[i]}-{names[j]}": n for n, (i, j) in enumerate(task_pairs(names))}
  pairs = sorted({p for _, _, p in keys}, key=lambda p: (order.get(p, len(order)), p))
  rows = [r for r in rows if any(k.startswith(GROUP_COS) for k in r)]
  cosine = np.array(
    [[[r.get(f"{GROUP_COS}{g}/{p}", np.nan) for r in rows] for p in pairs] for g in groups],
    np.float64,
  ).reshape(len(groups), len(pairs), len(rows))
  return {
    "steps": np.array([r["step"] for r in rows]),
    "groups": groups,
    "pairs": pairs,
    "cosine": cosine,
  }


def s_conflict_scores(cosine: np.ndarray, s: float = 0.0) -> np.ndarray:
  """Recon's S-conflict score of each group (Shi et al., ICLR 2023, scripts/
  cal_conflict_scores.py): the number of (logged step, task pair) whose cosine is below
  `s`, from cosine [G, P, N]."""
  with np.errstate(invalid="ignore"):
    return np.sum(cosine < s, axis=(1, 2))


def mean_cosine_p_values(cosine: np.ndarray) -> np.ndarray:
  """Holm-adjusted p-values [G, P] that a (group, pair)'s mean cosine over the logged steps
  is 0 (one-sample t-test per cell, Holm over all G x P cells), from cosine [G, P, N].

  Why: a group's S-conflict score needs a chance level to mean anything. Cosines that
  scatter around 0 give a score of about half the measurements at S = 0 whatever the
  group; only a mean cosine that differs from 0 says the tasks pull that group apart (or
  together) more than mini-batch noise does. Logged steps are treated as independent."""
  from scipy import stats as scipy_stats

  from mtl_jax.study import stats

  raw = np.full(cosine.shape[:2], np.nan)
  for g, p in np.ndindex(*raw.shape):
    x = cosine[g, p][np.isfinite(cosine[g, p])]
    if x.size >= 2 and x.std(ddof=1) > 0:
      t = x.mean() / (x.std(ddof=1) / np.sqrt(x.size))
      raw[g, p] = 2 * scipy_stats.t.sf(abs(t), x.size - 1)
  return np.array(stats.holm(raw.ravel())).reshape(raw.shape)


def group_summary(rows: list[dict], s: float = 0.0) -> dict:
  """Per group (network order): S-conflict score, measurements, mean cosine per pair and
  its Holm-adjusted p-value against 0 (`mean_cosine_p_values`)."""
  a = group_arrays(rows)
  if not a["groups"]:
    raise DiagnoseError(
      "metrics.jsonl has no per-group gradient rows (group_cos/...): the run predates "
      "them, or its train.schedule trains one task per step"
    )
  scores = s_conflict_scores(a["cosine"], s)
  p_values = mean_cosine_p_values(a["cosine"])
  return {
    "S": s,
    "num_rows": int(len(a["steps"])),
    "groups": {
      g: {
        "s_conflict": int(scores[k]),
        "measurements": int(np.isfinite(a["cosine"][k]).sum()),
        "mean_cosine": {p: _mean(a["cosine"][k, n]) for n, p in enumerate(a["pairs"])},
        "p_mean_cosine": {p: _finite(p_values[k, n]) for n, p in enumerate(a["pairs"])},
      }
      for k, g in enumerate(a["groups"])
    },
  }


def _finite(x: float) -> float | None:
  return float(x) if np.isfinite(x) else None


def significant_cells(s: dict, alpha: float = 0.05) -> list[tuple[str, str, float, float]]:
  """(group, pair, mean cosine, Holm p) of the cells whose mean cosine differs from 0."""
  return [
    (g, p, v["mean_cosine"][p], q)
    for g, v in s["groups"].items()
    for p, q in v["p_mean_cosine"].items()
    if q is not None and q < alpha
  ]


def _chance_line(s: dict, alpha: float = 0.05) -> str:
  cells = significant_cells(s, alpha)
  tests = sum(q is not None for v in s["groups"].values() for q in v["p_mean_cosine"].values())
  head = f"Mean cosine differs from 0 (t-test over the logged steps, Holm over {tests} tests, p < {alpha:g}): "
  if not cells:
    return head + "in no group: no group's tasks pull apart (or together) beyond mini-batch noise."
  return head + ", ".join(f"{g} {p} ({m:+.4f}, p={q:.3g})" for g, p, m, q in cells)


def format_group_summary(s: dict) -> str:
  """The groups by S-conflict score, highest first (as Recon lists them), then which
  groups' mean cosines differ from 0 beyond chance."""
  pairs = list(next(iter(s["groups"].values()))["mean_cosine"])
  ranked = sorted(s["groups"].items(), key=lambda kv: -kv[1]["s_conflict"])
  return "\n".join(
    [
      f"{s['num_rows']} logged steps; S-conflict score: (step, pair) with cosine < S={s['S']:g}",
      "",
      _table(
        ["group", "S-conflict", "of"] + [f"mean cos {p}" for p in pairs],
        [
          [g, str(v["s_conflict"]), str(v["measurements"])]
          + [_fmt(v["mean_cosine"][p]) for p in pairs]
          for g, v in ranked
        ],
      ),
    ]
    + ["", _chance_line(s)]
  )


def group_heatmap(rows: list[dict], path: str) -> str:
  """Writes a PNG: one panel per task pair, the cosine of each group (rows, network
  order) at each logged step (columns), diverging colours around 0."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  a = group_arrays(rows)
  g, p, n = a["cosine"].shape
  fig, axes = plt.subplots(
    p,
    1,
    figsize=(min(6 + 0.08 * n, 16), 1 + p * (0.8 + 0.28 * g)),
    squeeze=False,
    layout="constrained",
  )
  image = None
  for k, ax in enumerate(axes[:, 0]):
    image = ax.imshow(
      a["cosine"][:, k, :], aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest"
    )
    ax.set_yticks(range(g), a["groups"], fontsize=8)
    ticks = np.unique(np.linspace(0, n - 1, min(n, 8)).astype(int))
    ax.set_xticks(ticks, [str(a["steps"][t]) for t in ticks], fontsize=8)
    ax.set_title(f"cosine {a['pairs'][k].replace('-', '–')}", fontsize=10)
  axes[-1, 0].set_xlabel("step")
  fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="cosine")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run_groups(workdir: str, output: str | None = None, s: float = 0.0) -> dict:
  """--groups: prints the S-conflict table, writes group_cosine.png and group_summary.json."""
  output = output or os.path.join(workdir, "diagnostics")
  rows, _ = read_log(workdir)
  summary = group_summary(rows, s)
  os.makedirs(output, exist_ok=True)
  print(format_group_summary(summary))
  paths = [group_heatmap(rows, os.path.join(output, "group_cosine.png"))]
  paths.append(os.path.join(output, "group_summary.json"))
  with open(paths[-1], "w") as f:
    json.dump(summary, f, indent=2)
  print("\nwrote:\n" + "\n".join(f"  {p}" for p in paths))
  return summary


# --- Checkpoint mode


def checkpoint_rows(workdir: str, num_batches: int) -> list[dict]:
  """Rows like metrics.jsonl's, measured on the latest checkpoint over the next steps.

  Step k's row is the trainer's own step (`step.make_train_step`, with step k's dropout
  keys) from the checkpoint's parameters, on the batch training draws at step k
  (`train.train_batches`: the run's schedule, epoch caps, length grouping and packing);
  under a one-task schedule, on every task's next batch (`schedules.every_task_batch`).
  The update it computes is what the method would do (method stats), and is then dropped:
  every row is measured at the checkpoint's parameters."""
  import jax
  import jax.numpy as jnp

  from mtl_jax import train
  from mtl_jax.config import run_spec
  from mtl_jax.data import files
  from mtl_jax.models import hf_io
  from mtl_jax.runtime import checkpoint, xla_options
  from mtl_jax.runtime.metrics_log import _flatten
  from mtl_jax.step import make_train_step

  try:
    spec, model, state, frozen, tx = train.restore(workdir, jax.device_count())
    config = spec.config  # The split and the method's state are the run's.
    if "encoder" not in state.trainable:
      raise DiagnoseError("this run trains only the heads: no shared gradients to compare")
    data = train.load_data(spec, spec.tokenizer())
    batches = train.train_batches(spec, data["train"])
  except (
    FileNotFoundError,
    run_spec.ConfigError,
    files.DataError,  # Incl. a batch larger than a task's data (schedules.check_batch_sizes).
    hf_io.CheckpointError,
    checkpoint.UnreadableCheckpointError,
  ) as e:
    raise DiagnoseError(str(e)) from e
  step_fn = jax.jit(
    make_train_step(model, tx, tuple(range(len(spec.tasks))), config.seed, smart=spec.smart),
    compiler_options=xla_options.train_step_options(),
  )
  rows = []
  for step in range(int(state.step), int(state.step) + num_batches):
    at_step = state._replace(step=jnp.asarray(step, jnp.int32))
    _, metrics = step_fn(at_step, frozen, batches.every_task(step))
    measured = {
      k: v
      for k, v in metrics.items()
      if k == "task_loss" or k.startswith(("grad/", "group_", "method/"))
    }
    rows.append({"step": step, **_flatten(jax.device_get(measured), spec.task_names)})
  return rows


# --- Command line


def run(
  workdir: str, output: str | None = None, from_checkpoint: bool = False, batches: int = 8
) -> dict:
  """Diagnoses a workdir, prints the table and file paths, returns the summary."""
  output = output or os.path.join(workdir, "diagnostics")
  if from_checkpoint:
    if batches < 1:
      raise DiagnoseError(f"--batches must be >= 1, got {batches}")
    rows, dev_rows, name = checkpoint_rows(workdir, batches), [], "checkpoint_summary.json"
  else:
    (rows, dev_rows), name = read_metrics(workdir), "summary.json"
  os.makedirs(output, exist_ok=True)
  summary = summarize(rows, dev_rows)
  print(format_summary(summary))
  paths = [] if from_checkpoint else plot(rows, dev_rows, output)
  paths.append(os.path.join(output, name))
  with open(paths[-1], "w") as f:
    json.dump(summary, f, indent=2)
  print("\nwrote:\n" + "\n".join(f"  {p}" for p in paths))
  return summary


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if _GROUPS.value:
      run_groups(_WORKDIR.value, _OUTPUT.value, _S.value)
    else:
      run(_WORKDIR.value, _OUTPUT.value, _FROM_CHECKPOINT.value, _BATCHES.value)
  except (DiagnoseError, FileNotFoundError) as e:
    print(f"diagnose: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
