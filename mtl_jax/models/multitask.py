"""The multi-task model: one shared BERT encoder, pooling, and per-task heads.

Parameters: {'encoder': BertEncoder params (with any `lora` subtrees, and task layers'
`task_proj` / `task_layer` subtrees), 'heads': {...}}, and with adapter.task_specific
'task_specific': each task's copy of the chosen groups' leaves, stacked [T, ...]
(`mtl_jax.models.task_specific`).
`build` loads the pretrained encoder, initialises adapters and heads, makes the
task-specific copies, and decides once, from the fine-tuning mode, which leaves train
(`trainable_mask`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mtl_jax.data.packing import PACKING_KEYS
from mtl_jax.models import adapters, hf_io, task_layers, task_specific
from mtl_jax.models.bert import BertConfig, BertEncoder
from mtl_jax.models.heads import POOLINGS, HeadSpec, TaskHeads, pool

# Fine-tuning modes: which parameters train.
MODES = ("full", "probe") + adapters.KINDS


class MultitaskModel(nn.Module):
  config: BertConfig
  pooling: str = "mean"
  head_dropout: float = 0.1
  head_spec: HeadSpec = HeadSpec()

  def setup(self):
    self.encoder = BertEncoder(self.config)
    self.heads = TaskHeads(self.head_dropout, self.head_spec, self.pooling, self.config.hidden_size)

  def embed(
    self,
    input_ids,
    attention_mask,
    token_type_ids,
    deterministic: bool = True,
    task=None,
    packing: dict | None = None,
  ):
    """Returns (last hidden state [B, L, H], pooled [B, D]: D = H, or 2H for concat).

    `task` (an index into the tasks) is needed only by an encoder with task layers.
    `packing` (the packed batch's `PACKING_KEYS` arrays, `mtl_jax.data.packing`): the token
    arrays are packed rows [R, L]; the hidden states and pooled vectors returned are then
    per sequence, [S, L, H] and [S, D], in the unpacked batch's order."""
    if packing is None:
      hidden = self.encoder(input_ids, attention_mask, token_type_ids, deterministic, task)
    else:
      hidden = self.encoder(
        input_ids,
        attention_mask,
        token_type_ids,
        deterministic,
        task,
        packing["position_ids"],
        packing["segment_ids"],
      )
      hidden, attention_mask = unpack(hidden, packing)
    if self.pooling in POOLINGS:  # Parameter-free: works without heads params too.
      return hidden, pool(hidden, attention_mask, self.pooling)
    return hidden, self.heads.pool(hidden, attention_mask)

  def __call__(
    self,
    input_ids,
    attention_mask,
    token_type_ids,
    deterministic: bool = True,
    task=None,
    packing: dict | None = None,
  ):
    """[S, L] token arrays (or packed [R, L] rows with `packing`) -> every head's outputs
    (see TaskHeads)."""
    _, pooled = self.embed(input_ids, attention_mask, token_type_ids, deterministic, task, packing)
    return self.heads(pooled, deterministic)


def unpack(hidden: jax.Array, packing: dict) -> tuple[jax.Array, jax.Array]:
  """Packed hidden states [R, L, H] -> each sequence's own [S, L, H] (its segment moved to
  column 0) and its attention mask [S, L]: what the unpacked encoder gives, so every
  pooling (mean, CLS, the learned concat) works on it unchanged. An empty slot
  (seq_len 0) gets an all-zero mask, as a padding row of an unpacked batch."""
  length = hidden.shape[1]
  cols = packing["seq_start"][:, None] + jnp.arange(length)[None, :]
  mask = (jnp.arange(length)[None, :] < packing["seq_len"][:, None]).astype(jnp.int32)
  rows = hidden[packing["seq_row"]]  # [S, L, H]
  per_seq = jnp.take_along_axis(rows, jnp.minimum(cols, length - 1)[..., None], axis=1)
  return per_seq, mask


def apply(
  model: MultitaskModel, params: dict, batch: dict, perturbations: dict | None = None, **kwargs
) -> dict:
  """model.apply on a batch dict, packed (`mtl_jax.data.packing`) or not: every head's
  outputs on its sequences. kwargs: deterministic, task, rngs. `perturbations`: values
  added at the model's `perturb` points (their gradient is the activation's). Params with
  task-specific copies run with task `task`'s (`task_specific.task_params`)."""
  packing = {k: batch[k] for k in PACKING_KEYS} if PACKING_KEYS[0] in batch else None
  variables = {"params": task_specific.task_params(params, kwargs.get("task"))}
  if perturbations is not None:
    variables["perturbations"] = perturbations
  return model.apply(
    variables,
    batch["input_ids"],
    batch["attention_mask"],
    batch["token_type_ids"],
    packing=packing,
    **kwargs,
  )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What `build` needs; made from the `model` and `adapter` config sections."""

  path: str
  mode: str = "lora"
  lora: adapters.LoraConfig | None = None
  pooling: str = "mean"
  head_dropout: float = 0.1
  dtype: str = "float32"
  heads: HeadSpec = HeadSpec()
  task_layers: task_layers.TaskLayerConfig | None = None
  task_specific: tuple[str, ...] = ()  # Groups copied per task (`param_group` names).
  task_specific_top: int = 0  # And the top N encoder layers' groups (`task_specific_groups`).

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown fine-tuning mode {self.mode!r}; expected one of {MODES}")
    if (self.mode in adapters.KINDS) != (self.lora is not None):
      raise ValueError(f"mode {self.mode!r} and lora={self.lora} disagree")


def build(
  spec: ModelSpec, rng: jax.Array, bert: hf_io.BertConfig | None = None
) -> tuple[MultitaskModel, dict]:
  """Pretrained encoder + fresh adapters and heads -> (model, params). `bert`: the model's
  config.json when already read (mtl_jax.config.run_spec.RunSpec.bert)."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(spec.dtype)
  if dtype is None:
    raise ValueError(f"unknown dtype {spec.dtype!r}; expected float32 or bfloat16")
  config, pretrained = hf_io.load_bert(
    spec.path, bert, lora=spec.lora, task_layers=spec.task_layers, dtype=dtype
  )
  model = MultitaskModel(config, spec.pooling, spec.head_dropout, spec.heads)
  dummy = jnp.zeros((2, 8), jnp.int32)
  task = 0 if spec.task_layers is not None else None

  def init(rng, pretrained):
    """The initialised tree with the pretrained leaves laid over it, in one jitted function:
    XLA then never draws the random values those leaves replace (most of the model: at
    BERT-base size that drawing took 30 s of CPU), and the adapters', task layers' and
    heads' draws are the same as in a full initialisation."""
    params = model.init(rng, dummy, dummy + 1, dummy, True, task)["params"]
    return dict(params, encoder=_overlay(params["encoder"], pretrained))

  params = jax.jit(init)(rng, pretrained)
  if spec.lora is not None and not any("lora" in p for p in traverse_util.flatten_dict(params)):
    raise ValueError(
      f"adapter.layers {spec.lora.layers} selects no layer of this "
      f"{config.num_layers}-layer model: no adapter would train"
    )
  params = adapters.reset_dora_magnitudes(params)
  groups = task_specific_groups(
    spec.task_specific, spec.task_specific_top, config.num_layers, spec.lora
  )
  return model, _copy_groups(params, groups, spec.mode, len(spec.heads.tasks))


def _copy_groups(params: dict, groups: tuple[str, ...], mode: str, num_tasks: int) -> dict:
  """`params` with each task's copy of the chosen groups' leaves that train in `mode`:
  every leaf under full fine-tuning, and under probe (a frozen copy would be the shared
  weight: the chosen groups train per task while the rest of the encoder stays frozen);
  the adapters under LoRA/rsLoRA/DoRA (the frozen pretrained base stays shared)."""
  if not groups:
    return params

  def copied(path: tuple[str, ...]) -> bool:
    return param_group(path) in groups and (mode not in adapters.KINDS or "lora" in path)

  copies = [p for p in traverse_util.flatten_dict(params) if p[0] == "encoder" and copied(p)]
  bare = [g for g in groups if not any(param_group(p) == g for p in copies)]
  if bare:
    raise ValueError(
      f"task-specific groups {bare} have no parameter that trains under adapter.kind="
      f"{mode!r} (no adapter on them): nothing would be copied per task"
    )
  return task_specific.make_copies(params, copied, num_tasks)


def _is_new(path: tuple[str, ...]) -> bool:
  """Leaves no pretrained checkpoint holds: adapters and task layers."""
  return "lora" in path or task_layers.is_task_specific(path)


def _overlay(initialised: dict, pretrained: dict) -> dict:
  """Replaces every pretrained leaf (all but `_is_new` ones) with its value, checking shapes."""
  flat = traverse_util.flatten_dict(initialised)
  loaded = traverse_util.flatten_dict(pretrained)
  for path, value in loaded.items():
    if path not in flat:
      raise hf_io.CheckpointError(f"checkpoint tensor {'/'.join(path)} has no place in the model")
    if flat[path].shape != value.shape:
      raise hf_io.CheckpointError(
        f"{'/'.join(path)}: checkpoint shape {value.shape} != model shape {flat[path].shape}"
      )
    flat[path] = jnp.asarray(value)
  missing = [p for p in flat if p not in loaded and not _is_new(p)]
  if missing:
    raise hf_io.CheckpointError(f"checkpoint lacks {['/'.join(p) for p in missing[:5]]}")
  return traverse_util.unflatten_dict(flat)


def trainable_mask(params: dict, mode: str) -> dict:
  """Pytree of bools: True where a leaf trains under `mode`.

  full: everything. probe: heads only. lora/rslora/dora: adapters and heads. Task layers
  (PALs, low-rank) and task-specific copies (adapter.task_specific), when the model has
  them, train in every mode.
  """

  def trains(path: tuple[str, ...]) -> bool:
    if path[0] == "heads" or mode == "full" or task_layers.is_task_specific(path):
      return True
    if task_specific.is_copy(path):
      return True
    return mode in adapters.KINDS and "lora" in path

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: trains(p) for p in flat})


def split(params: dict, mask: dict) -> tuple[dict, dict]:
  """(trainable, frozen) flat-keyed halves of params, by a trainable_mask."""
  flat, flat_mask = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
  trainable = {p: v for p, v in flat.items() if flat_mask[p]}
  frozen = {p: v for p, v in flat.items() if not flat_mask[p]}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable: dict, frozen: dict) -> dict:
  """Inverse of `split`."""
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


def is_shared(trainable: dict) -> dict:
  """Pytree of bools over trainable params: True for leaves every task updates (the
  encoder and its adapters); False for per-task leaves (heads, task layers, task-specific
  copies, loss-weighting log-variances)."""
  flat = traverse_util.flatten_dict(trainable)
  return traverse_util.unflatten_dict(
    {p: p[0] == "encoder" and not task_layers.is_task_specific(p) for p in flat}
  )


# The shared parameter groups (`param_group`): where in the encoder the tasks' gradients
# are compared (per-group diagnostics in `mtl_jax.step`) and, with grad.scope="group",
# where the gradient method runs on its own (`mtl_jax.grad.group_scoped`).
ATTENTION_BLOCK = ("attention", "attention_norm")  # Q, K, V, output dense; its LayerNorm.
FFN_BLOCK = ("intermediate", "output", "output_norm")  # Both denses; the output LayerNorm.


def own_slices(trainable: dict) -> dict:
  """Pytree of bools over trainable params: True for the task-specific copies, whose
  per-task gradients the step gives as one slice per task (`task_specific`,
  `mtl_jax.grad.shared_only`)."""
  flat = traverse_util.flatten_dict(trainable)
  return traverse_util.unflatten_dict({p: task_specific.is_copy(p) for p in flat})


def param_group(path: tuple[str, ...]) -> str | None:
  """The group of the trainable leaf at `path` (a tuple of dict keys), None for the leaves
  that are not shared (heads, task layers, task-specific copies, loss-weighting
  log-variances: `is_shared`).

  "embeddings" (word, position, token-type tables and their LayerNorm); "layer_<i>.attention"
  (the self-attention's query/key/value/output denses and the attention output LayerNorm);
  "layer_<i>.ffn" (the intermediate and output denses and the output LayerNorm); "other"
  for any other shared leaf. An adapter's leaves (LoRA/rsLoRA a, b; DoRA's magnitude) sit
  under the dense they adapt and belong to its block: groups mean the same part of the
  network whatever adapter.kind trains it (with LoRA on query and value, a layer's
  attention group holds those four factors and its ffn group is absent)."""
  if not path or path[0] != "encoder" or task_layers.is_task_specific(path):
    return None
  part = path[1] if len(path) > 1 else ""
  if part == "embeddings":
    return "embeddings"
  if part.startswith("layer_") and len(path) > 2:
    if path[2] in ATTENTION_BLOCK:
      return f"{part}.attention"
    if path[2] in FFN_BLOCK:
      return f"{part}.ffn"
  return "other"


def param_groups(tree) -> object:
  """`param_group` of every leaf of `tree` (params, or gradients with the same paths; any
  pytree of dicts, optax's masked placeholders kept), as a pytree of str / None."""

  def name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", key)))

  return jax.tree_util.tree_map_with_path(
    lambda path, _: param_group(tuple(name(k) for k in path)), tree
  )


BLOCKS = ("attention", "ffn")  # The two groups of an encoder layer.


def group_names(num_layers: int) -> tuple[str, ...]:
  """Every group of a `num_layers`-layer encoder that a config may name, network order."""
  layers = (f"layer_{i}.{b}" for i in range(num_layers) for b in BLOCKS)
  return ("embeddings", *layers)


def task_specific_groups(
  names: tuple[str, ...], top: int, num_layers: int, lora: adapters.LoraConfig | None = None
) -> tuple[str, ...]:
  """The groups made task-specific, network order: adapter.task_specific's `names`, and
  the groups of each of the `top` highest encoder layers (adapter.task_specific_top): both,
  or under LoRA-style adapters (`lora`) those that hold an adapter. ValueError for a name
  this encoder has not, or `top` out of 0..num_layers."""
  known = group_names(num_layers)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(
      f"unknown task-specific groups {unknown}: a {num_layers}-layer encoder has "
      f"'embeddings', 'layer_<i>.attention' and 'layer_<i>.ffn' for i in 0..{num_layers - 1}"
    )
  if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= num_layers:
    raise ValueError(
      f"task_specific_top={top!r}: must be an integer in 0..{num_layers} (the encoder's layers)"
    )
  tops = {f"layer_{i}.{b}" for i in range(num_layers - top, num_layers) for b in BLOCKS}
  if lora is not None:
    tops = {g for g in tops if group_has_adapter(g, lora)}
  return tuple(sorted(set(names) | tops, key=group_sort_key))


def group_has_adapter(group: str, lora: adapters.LoraConfig) -> bool:
  """Whether `lora` puts an adapter on a dense layer of `group` (never on the embeddings)."""
  layer, _, block = group.partition(".")
  if not layer.startswith("layer_"):
    return False
  in_block = ADAPTER_BLOCKS[block]
  return any(lora.applies_to(int(layer[len("layer_") :]), t) for t in in_block)


# Each layer group's dense layers, by their adapter target names (adapters.TARGETS).
ADAPTER_BLOCKS = {
  "attention": ("query", "key", "value", "attention_output"),
  "ffn": ("intermediate", "output"),
}


def group_sort_key(group: str) -> tuple:
  """Network order: embeddings, layer_0.attention, layer_0.ffn, layer_1..., other."""
  if group == "embeddings":
    return (0, 0, "")
  if group.startswith("layer_"):
    layer, _, block = group[len("layer_") :].partition(".")
    return (1, int(layer) if layer.isdigit() else 0, block)
  return (2, 0, group)


def count(tree: dict) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
