"""Resuming: which config changes a workdir's checkpoints refuse (`check_resume`), and how
a run written before a key existed resumes as it was trained (`adopt_saved`)."""

from __future__ import annotations

import json

import ml_collections

from mtl_jax.config import ConfigError
from mtl_jax.config.upgrade import _ABSENT_MEANS, _declared_elsewhere, _flatten

# --- Resuming: which config changes a workdir's checkpoints refuse

# Config keys (dotted; a prefix covers its whole subtree) that must be equal when a run
# resumes from a workdir's checkpoint: they change the model, the data, or the optimization
# trajectory, so a changed value would silently mix two experiments in one run.
# train.steps is included because the warmup/cosine learning-rate schedule is a function of
# it ("train longer" on a resumed run would jump the LR), and so is the number of epochs
# an annealed train.schedule spreads over. Everything else (train.log_every,
# eval_every, checkpoint_every, keep_checkpoints, early_stopping_patience, eval.*) may change.
RESUME_MUST_MATCH = (
  "seed",
  "tasks",
  "task_order",
  "data_dir",
  "data_limit",
  "strict_data",
  "model",
  "adapter",
  "grad",
  "heads",
  "train.steps",
  "train.seqs_per_task",
  "train.length_buckets",
  "train.length_grouping",
  "train.token_balancing",
  "train.learning_rate",
  "train.warmup_fraction",
  "train.weight_decay",
  "train.grad_clip",
  "train.head_lr_multiplier",
  "train.layer_lr_decay",
  "train.ema_decay",
  "train.loss_weighting",
  "train.schedule",
  "train.epoch_examples",
  "train.packing",
  "train.smart",
)

_ABSENT = "<absent>"  # How a key absent from a config and from _ABSENT_MEANS compares.


def _must_match(key: str) -> bool:
  return any(key == p or key.startswith(p + ".") for p in RESUME_MUST_MATCH)


def resume_mismatches(
  saved: dict, config: ml_collections.ConfigDict
) -> list[tuple[str, object, object]]:
  """(key, saved value, new value) for each RESUME_MUST_MATCH key that differs between a
  workdir's config.json (`saved`, as loaded from JSON) and `config`; sorted by key."""
  new = _flatten(json.loads(config.to_json_best_effort()))  # Tuples -> lists, as in `saved`.
  old = _flatten(saved)
  out = []
  for key in sorted(set(new) | set(old)):
    if not _must_match(key):
      continue
    absent = _ABSENT if _declared_elsewhere(key, saved) else _ABSENT_MEANS.get(key, _ABSENT)
    a = old.get(key, absent)
    b = new.get(key, _ABSENT_MEANS.get(key, _ABSENT))
    if a != b:
      out.append((key, a, b))
  return out


# A workdir written before train.packing existed resumes as it was trained: unpacked (what
# the key's absence means, although today's default packs), and with its saved values of
# these keys, whose defaults changed with packing.
_PRE_PACKING_KEEPS = ("train.length_grouping",)


# Keys that change which examples a step trains, added after runs were written without
# them: such a run resumes with what their absence means (the order it was trained in).
_ORDER_KEYS_ADDED_LATER = ("train.token_balancing",)


def adopt_saved(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """For a `saved` config.json of a run written before train.packing existed: sets, in
  place, train.packing to False and the _PRE_PACKING_KEEPS keys to their saved values; for
  one written before a key of _ORDER_KEYS_ADDED_LATER, that key to what its absence means.
  Returns "key=value" of those it changed (to log). Other runs: changes nothing."""
  flat, changed = _flatten(saved), []
  wanted = {k: _ABSENT_MEANS[k] for k in _ORDER_KEYS_ADDED_LATER if k not in flat}
  if "train.packing" not in flat:
    wanted["train.packing"] = _ABSENT_MEANS["train.packing"]
    wanted.update({k: flat[k] for k in _PRE_PACKING_KEEPS if k in flat})
  for key, value in wanted.items():
    section, name = key.split(".")
    if name in config[section] and config[section][name] != value:
      config[section][name] = value
      changed.append(f"{key}={value!r}")
  return changed


def check_resume(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigError naming every RESUME_MUST_MATCH key whose value differs from the
  config the checkpoints in `workdir` were trained with."""
  diffs = resume_mismatches(saved, config)
  if diffs:
    listed = "; ".join(f"config.{k}: checkpoint has {a!r}, now {b!r}" for k, a, b in diffs)
    raise ConfigError(
      f"{workdir} holds checkpoints of a run with a different config ({listed}). These keys "
      f"change the model, data or optimization, so the run cannot resume with them changed: "
      f"use a fresh --workdir, or restore the old values"
    )
