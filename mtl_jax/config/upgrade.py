"""A run's saved config.json in today's schema (`upgrade`, `saved_config`).

A config read back from a run's config.json (to predict, embed, export or diagnose the
run) goes through `upgrade` first, which brings a config written by an earlier version to
today's schema (mtl_jax.config.defaults): the code after it reads every key as an
attribute, never `.get(key, default)`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from mtl_jax import smart as smart_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax.config import ConfigError, defaults
from mtl_jax.models import heads as heads_lib
from mtl_jax.tasks import TASKS

CONFIG_JSON = "config.json"  # A training workdir's config, written by the trainer.


def _flatten_plain(tree: dict) -> dict:
  """A tree's leaves by dotted key, tuples as JSON lists (as config.json holds them)."""
  return _flatten(json.loads(json.dumps(tree)))


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# --- Saved configs: a run's config.json in today's schema

# Keys added after some workdirs were written, and what their absence from an old
# config.json means: how the runs written before them trained. `upgrade` fills them so;
# `resume_mismatches` compares saved configs as written, with these for absent keys.
# Every value is today's default (mtl_jax/config/defaults.py) but train.packing's: the runs
# before packing trained unpacked. A key added later that may change on resuming, and
# whose absence means its default, need not be listed (train.param_sharding,
# train.early_stopping_patience): `upgrade` fills every absent key from mtl_jax/config/defaults.py.
_ABSENT_MEANS = {
  "train.loss_weighting": "none",
  "train.schedule": "all_tasks",
  "train.packing": False,
  "train.token_balancing": 0,
  **{f"train.epoch_examples.{task}": 0 for task in TASKS},
  "train.head_lr_multiplier": 1.0,
  "train.layer_lr_decay": 1.0,
  "train.ema_decay": 0.0,
  "adapter.task_layers": "none",
  "adapter.task_layer_size": 0,
  "adapter.task_specific": [],  # As config.json holds a tuple (resume compares JSON values).
  "adapter.task_specific_top": 0,
  **{
    f"heads.{f.name}": f.default
    for f in dataclasses.fields(heads_lib.HeadSpec)
    if f.name != "tasks"  # config.tasks, not a heads key.
  },
  # Runs before config.tasks trained the three CS224N tasks, as declared in mtl_jax.tasks.
  **_flatten_plain({"tasks": tasks_lib.CS224N}),
  "task_order": list(TASKS),
  **{f"train.smart.{f.name}": f.default for f in dataclasses.fields(smart_lib.SmartConfig)},
}


def default_config() -> ml_collections.ConfigDict:
  """Today's schema, with its default values (mtl_jax.config.defaults)."""
  return defaults.get_config()


# Sections whose keys are the user's: a method's arguments, the tasks and their epoch caps.
_FREE_FORM = ("grad.kwargs", "tasks", "train.epoch_examples")


def upgrade(saved: dict) -> ml_collections.ConfigDict:
  """The config of a run's config.json (`saved`, as loaded from JSON) in today's schema,
  locked as main.py's is.

  A key the run's version of mtl_jax did not have takes the value that reproduces how the
  run trained: _ABSENT_MEANS's where it lists the key (train.packing=False: runs written
  before packing trained unpacked, although today's default packs), else
  mtl_jax/config/defaults.py's. JSON lists become the schema's tuples. A key today's schema lacks,
  or a value of the wrong type, is a ConfigError naming it.
  """
  config = default_config()
  _overlay(config, saved, "")
  present = _flatten(saved)
  for key, value in _ABSENT_MEANS.items():
    if key not in present and not _declared_elsewhere(key, saved):
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  for task in config.train.epoch_examples:  # Free-form, but one key per declared task.
    if task not in config.tasks:
      raise ConfigError(
        f"config.train.epoch_examples.{task}: not a key of this config: it names no task of "
        f"config.tasks ({sorted(config.tasks)})"
      )
  config.lock()
  return config


def _declared_elsewhere(key: str, saved: dict) -> bool:
  """A key of the default tasks' declarations (tasks.<name>.<key>) that a config.json
  declaring its own tasks left out: its tasks are those it declares, not the defaults'."""
  return key.startswith("tasks.") and "tasks" in saved


def _overlay(node: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
  """Sets, in place, each value of `saved` (a JSON tree) on the same key of `node`."""
  for k, v in saved.items():
    key = prefix + k
    if k not in node:
      raise ConfigError(
        f"config.{key}: not a key of this version's config (mtl_jax/config/defaults.py): "
        f"was config.json written by another version of mtl_jax, or edited?"
      )
    section = key in _FREE_FORM or isinstance(node[k], ml_collections.ConfigDict)
    if section and not isinstance(v, dict):
      raise ConfigError(f"config.{key}: a section (a JSON object) in this version, got {v!r}")
    if key in _FREE_FORM:
      node[k] = ml_collections.ConfigDict(v)
    elif section:
      _overlay(node[k], v, key + ".")
    else:
      try:
        node[k] = v
      except TypeError as e:
        raise ConfigError(f"config.{key}: {v!r} has the wrong type ({e})") from e


def read_run_config(workdir: str) -> dict:
  """A training workdir's config.json as written (FileNotFoundError when it has none;
  ConfigError naming the file when it is damaged)."""
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(
      f"{path}: not a valid run config ({e}): restore it, or train in a fresh --workdir"
    ) from None
  if not isinstance(saved, dict):
    raise ConfigError(f"{path}: not a valid run config (a JSON {type(saved).__name__})")
  return saved


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training workdir's run was trained with: its config.json, upgraded
  (`upgrade`). FileNotFoundError when it has none."""
  return upgrade(read_run_config(workdir))
