"""Recon: turn a finished run's most-conflicting shared groups into task-specific ones.

  python -m mtl_jax.recon --workdir=RUN --top_k=2 [--threshold=0.0] [--output=FILE.py]

Recon (Shi et al., ICLR 2023, "Recon: Reducing Conflicting Gradients from the Root for
Multi-Task Learning"; reference code moukamisama/Recon) scores each shared parameter group
by how often the tasks' gradients conflict there, and retrains from scratch with the K
highest-scoring groups task-specific. The score is the S-conflict score of
`python -m mtl_jax.diagnose --groups` (the number of (logged step, task pair) whose
gradient cosine is below S = --threshold, from the group_cos/<group>/<a>-<b> rows every
all-tasks step logs every train.log_every steps), counted over the first quarter of the
run's train.steps, as the paper does. Groups with equal scores rank in network order
(embeddings, layer_0.attention, layer_0.ffn, ...), as the reference's stable sort over its
layers does.

Prints the ranking table and writes a config file (default RUN/recon_top<K>.py): the
run's own config (its config.json, embedded) with the K groups added to
adapter.task_specific, so that `python main.py --config=FILE.py --workdir=NEW` trains the
same experiment with each task its own copy of those groups (docs/methods.md, "Task-specific
groups"). The config is built (`run_spec.build`) before it is written, so a config that
would not run is never written.
"""

from __future__ import annotations

import json
import os
import pprint
import sys

from absl import app, flags

from mtl_jax.tools import cli, diagnose

FIRST_FRACTION = 0.25  # Scores count the logged steps in this first share of train.steps.

FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "A finished training run's directory (metrics.jsonl, config.json).",
  flag_values=FLAGS,
)
_TOP_K = flags.DEFINE_integer(
  "top_k",
  None,
  "How many of the highest-scoring groups to make task-specific.",
  lower_bound=1,
  flag_values=FLAGS,
)
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  0.0,
  "S: a (step, task pair) conflicts in a group when its gradient cosine there is below S "
  "(the reference's default: 0.0).",
  flag_values=FLAGS,
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "The config file to write (default WORKDIR/recon_top<K>.py).", flag_values=FLAGS
)
cli.mark_required(FLAGS, ["workdir", "top_k"])


class ReconError(ValueError):
  """A run Recon cannot score, or a config it cannot write; the message says why."""


def _is_group(key: str) -> bool:
  return key.startswith(diagnose.GROUP_COS)


def scored_rows(rows: list[dict], steps: int) -> list[dict]:
  """The logged rows within the first FIRST_FRACTION of a run of `steps` steps (a row's
  "step" counts the steps done)."""
  return [r for r in rows if r["step"] <= FIRST_FRACTION * steps]


def ranking(summary: dict) -> list[str]:
  """The groups of a `diagnose.group_summary`, highest S-conflict score first, ties in
  network order."""
  from mtl_jax.models.multitask import group_sort_key

  groups = summary["groups"]
  return sorted(groups, key=lambda g: (-groups[g]["s_conflict"], group_sort_key(g)))


def score(workdir: str, threshold: float = 0.0) -> tuple[dict, list[str], dict]:
  """(the S-conflict summary over the first quarter of the run, its groups ranked, the
  run's config.json as saved)."""
  from mtl_jax.config import upgrade

  rows, _ = diagnose.read_log(workdir)
  saved = upgrade.read_run_config(workdir)
  steps = upgrade.upgrade(saved).train.steps
  first = scored_rows(rows, steps)
  try:
    summary = diagnose.group_summary(first, threshold)
  except diagnose.DiagnoseError as e:
    logged = [r["step"] for r in rows if any(_is_group(k) for k in r)]
    if not logged:
      raise ReconError(str(e)) from e
    raise ReconError(
      f"no per-group row (group_cos/...) in the first quarter of the run's {steps} steps "
      f"(steps <= {FIRST_FRACTION * steps:g}); the first is logged at step {logged[0]}: "
      "train with a smaller train.log_every"
    ) from e
  summary["steps"] = [int(r["step"]) for r in first if any(_is_group(k) for k in r)]
  return summary, ranking(summary), saved


def recon_config(saved: dict, groups: list[str]) -> dict:
  """The run's saved config with `groups` added to adapter.task_specific (network order)."""
  from mtl_jax.models.multitask import group_sort_key

  config = json.loads(json.dumps(saved))  # A deep copy.
  adapter = config.setdefault("adapter", {})
  chosen = set(adapter.get("task_specific", [])) | set(groups)
  adapter["task_specific"] = sorted(chosen, key=group_sort_key)
  return config


_TEMPLATE = '''"""Recon (mtl_jax.recon): the config of {workdir}
with its {k} most-conflicting shared groups task-specific: {groups}.

Scored by `python -m mtl_jax.recon --workdir={workdir} --top_k={k} --threshold={s:g}`:
the S-conflict score, (logged step, task pair) with gradient cosine < {s:g}, over the
first quarter of the run's {steps} steps (logged steps {window}).

{table}

Run: python main.py --config={path} --workdir=NEW_WORKDIR
"""

from mtl_jax.config import upgrade

# The run's config.json with adapter.task_specific extended.
CONFIG = {config}


def get_config():
  return upgrade.upgrade(CONFIG)
'''


def write_config(path: str, workdir: str, k: int, summary: dict, config: dict) -> str:
  """Writes the config file (checked to build first); returns its path."""
  from mtl_jax.config import run_spec, upgrade

  built = upgrade.upgrade(config)
  run_spec.build(built)  # A ConfigError names the key; nothing is written then.
  window = summary["steps"]
  text = _TEMPLATE.format(
    workdir=os.path.abspath(workdir),
    k=k,
    groups=", ".join(config["adapter"]["task_specific"]),
    s=summary["S"],
    steps=built.train.steps,
    window=f"{window[0]}..{window[-1]}, {len(window)} rows" if window else "none",
    table="\n".join(
      ("  " + line).rstrip() for line in diagnose.format_group_summary(summary).splitlines()
    ),
    path=path,
    config=pprint.pformat(config, indent=1, width=96, sort_dicts=False),
  )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def run(workdir: str, k: int, threshold: float = 0.0, output: str | None = None) -> dict:
  """Scores the run, prints the ranking, writes the config; returns {"ranking", "chosen",
  "config", "summary"}."""
  summary, ranked, saved = score(workdir, threshold)
  if k > len(ranked):
    raise ReconError(
      f"--top_k={k}: the run logs {len(ranked)} shared groups ({', '.join(ranked)}); "
      f"choose at most {len(ranked)}"
    )
  chosen = ranked[:k]
  output = output or os.path.join(workdir, f"recon_top{k}.py")
  cli.check_output(output)
  print(diagnose.format_group_summary(summary))
  path = write_config(output, workdir, k, summary, recon_config(saved, chosen))
  print(f"\ntask-specific: {', '.join(chosen)}\nwrote {path}")
  print(f"train it: python main.py --config={path} --workdir=NEW_WORKDIR")
  return {"ranking": ranked, "chosen": chosen, "config": path, "summary": summary}


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mtl_jax.config import ConfigError

  try:
    run(_WORKDIR.value, _TOP_K.value, _THRESHOLD.value, _OUTPUT.value)
  except (ReconError, diagnose.DiagnoseError, FileNotFoundError) as e:
    print(f"recon: error: {e}", file=sys.stderr)
    return 2
  except (ConfigError, cli.OutputError) as e:
    sys.exit(f"error: {e}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
