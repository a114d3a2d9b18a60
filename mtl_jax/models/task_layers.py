"""Task-specific layers inside the encoder: PALs and low-rank layers (Stickland & Murray 2019,
"BERT and PALs", reference code github.com/AsaCooperStickland/Bert-n-Pals, `modeling.py`).

In every encoder layer a task-specific function TS of the layer's input h is added before
the layer's last LayerNorm:  out = LN(h_attn + FFN(h_attn) + TS_t(h)),  t = the task.

  pals      TS(h) = gelu(V_D · attn(V_E · h)): V_E [H, s] and V_D [s, H] are shared by all
            layers (one pair per task), attn is a 6-head self-attention of width s without
            an output projection (its query/key/value are per layer and per task). s = 204
            for H = 768. The final GELU follows the reference code (`BERTPals.forward`).
  low_rank  TS(h) = V_D · gelu(V_E · h), V_E [H, s], V_D [s, H] per layer and per task;
            s = 100 for H = 768.
For smaller models s scales with H (s = round(204 · H / 768), a multiple of the 6 heads;
s = round(100 · H / 768)), unless `adapter.task_layer_size` sets it.

Every weight has a leading task axis [T, ...] and the task id (possibly traced, as in the
vmapped train step) picks its slice, so one compiled step serves all tasks and each task's
gradient lands in its own slice only. The subtrees are `encoder/task_proj` (PALs' V_E, V_D)
and `encoder/layer_i/task_layer`; `multitask.is_shared` treats them as task-specific
(gradient-surgery methods leave them alone).

Decision (differs from the reference, which initialises all weights N(0, 0.02)): V_D starts
at zero, so that at step 0 the model is exactly the pretrained one — as LoRA's B = 0 does.
That matters when the encoder is frozen (`adapter.kind=probe|lora` + task layers), where the
pretrained layers cannot re-adapt to a random perturbation of their input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.dropout import Dropout
from mtl_jax.models.gelu import exact_gelu

KINDS = ("pals", "low_rank")
# Parameter-subtree names of task layers: per-task weights, never shared across tasks.
SUBTREES = ("task_proj", "task_layer")
PALS_HEADS = 6
_BASE_SIZE = {"pals": 204, "low_rank": 100}  # For hidden size 768 (BERT-base).


@dataclasses.dataclass(frozen=True)
class TaskLayerConfig:
  kind: str
  num_tasks: int
  size: int = 0  # 0: scaled from the reference sizes by the hidden size (see module doc).

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown task layer kind {self.kind!r}; expected one of {KINDS}")
    if self.size < 0:
      raise ValueError(f"task layer size must be >= 0, got {self.size}")
    if self.kind == "pals" and self.size % PALS_HEADS:
      raise ValueError(
        f"PALs size {self.size} must be a multiple of its {PALS_HEADS} attention heads"
      )

  def width(self, hidden_size: int) -> int:
    """s: the width of the task layer for an encoder of this hidden size."""
    if self.size:
      return self.size
    s = round(_BASE_SIZE[self.kind] * hidden_size / 768)
    if self.kind == "pals":
      s = max(PALS_HEADS, round(s / PALS_HEADS) * PALS_HEADS)
    return max(s, 1)


def is_task_specific(path: tuple[str, ...]) -> bool:
  """True for the parameter paths of task layers."""
  return any(name in SUBTREES for name in path)


class TaskDense(nn.Module):
  """A dense layer with one weight per task (kernel [T, in, out], bias [T, out])."""

  features: int
  num_tasks: int
  kernel_init: Callable = nn.initializers.normal(0.02)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, task: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (self.num_tasks, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.num_tasks, self.features))
    return x.astype(self.dtype) @ kernel[task].astype(self.dtype) + bias[task].astype(self.dtype)


class PalsProjections(nn.Module):
  """PALs' V_E (down) and V_D (up), one pair per task, shared by every encoder layer."""

  config: TaskLayerConfig
  hidden_size: int
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.down = TaskDense(cfg.width(self.hidden_size), cfg.num_tasks, dtype=self.dtype)
    self.up = TaskDense(self.hidden_size, cfg.num_tasks, nn.initializers.zeros, dtype=self.dtype)

  def __call__(self, x: jax.Array, task: jax.Array) -> jax.Array:  # Used by init only.
    return self.up(self.down(x, task), task)


class TaskLayer(nn.Module):
  """TS_t(h) of one encoder layer: [B, L, H] -> [B, L, H] (see the module docstring)."""

  config: TaskLayerConfig
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    h: jax.Array,
    mask_bias: jax.Array,
    task: jax.Array,
    projections: PalsProjections | None,
    deterministic: bool,
  ) -> jax.Array:
    hidden = h.shape[-1]
    s = self.config.width(hidden)
    dense = lambda n, name, **kw: TaskDense(
      n, self.config.num_tasks, dtype=self.dtype, name=name, **kw
    )
    if self.config.kind == "low_rank":
      down = exact_gelu(dense(s, "down")(h, task))
      return dense(hidden, "up", kernel_init=nn.initializers.zeros)(down, task)
    x = projections.down(h, task)
    b, l, _ = x.shape
    split = lambda t: t.reshape(b, l, PALS_HEADS, s // PALS_HEADS)
    q, k, v = (split(dense(s, n)(x, task)) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(s // PALS_HEADS).astype(q.dtype)
    probs = jax.nn.softmax(scores.astype(jnp.float32) + mask_bias, axis=-1).astype(self.dtype)
    probs = Dropout(self.attention_dropout)(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, s)
    return exact_gelu(projections.up(context, task))
