"""A Flax (linen) BERT encoder that reproduces Hugging Face's `BertModel` exactly.

Parameter names mirror Hugging Face's so that `hf_io` is a readable table:
  embeddings/{word_embeddings, position_embeddings, token_type_embeddings}/embedding,
  embeddings/layer_norm, layer_{i}/attention/{query, key, value, output},
  layer_{i}/attention_norm, layer_{i}/{intermediate, output}, layer_{i}/output_norm.
Dense layers are `AdaptedDense`, so LoRA-style adapters appear as `.../lora` subtrees.

Pitfalls this file avoids: BERT's GELU is the exact erf form (`jax.nn.gelu` defaults to
tanh); LayerNorm epsilon comes from the checkpoint's config (1e-12, not Flax's 1e-6).

Between the embeddings and the encoder's output the hidden states are token-major
[B * L, H], not [B, L, H] (attention alone views them as [B, L, heads, head_dim]): then
every bias and LayerNorm parameter gradient is a sum over one token axis, because XLA:CPU
lowers a sum over the two axes (B, L) to a two-dimensional reduce-window that is many times
slower than a one-axis sum, and the full fine-tuning step has dozens of them (measurements:
BENCHMARKS.md, "Where the time goes"). The values are the same: only the shapes changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.adapters import AdaptedDense, LoraConfig
from mtl_jax.models.dropout import Dropout
from mtl_jax.models.gelu import OTHER_ACTIVATIONS, exact_gelu
from mtl_jax.models.task_layers import PalsProjections, TaskLayer, TaskLayerConfig


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture (from a Hugging Face config.json) plus how it is adapted."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  hidden_act: str = "gelu"  # The feed-forward activation (mtl_jax/models/gelu.py).
  lora: LoraConfig | None = None
  task_layers: TaskLayerConfig | None = None  # PALs / low-rank task layers (task_layers.py).
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> BertConfig:
    """Builds a config from a Hugging Face BERT config.json dict."""
    act = hf.get("hidden_act", "gelu")
    if act == "gelu_python":  # transformers' own erf GELU: the same function.
      act = "gelu"
    if act != "gelu" and act not in OTHER_ACTIVATIONS:
      known = ", ".join(["gelu", "gelu_python", *OTHER_ACTIVATIONS])
      raise ValueError(f"unsupported hidden_act {act!r}: mtl_jax implements {known}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("only absolute position embeddings are supported")
    sizes = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
    sizes += ["intermediate_size", "max_position_embeddings", "type_vocab_size"]
    for key in sizes:
      value = hf.get(key, 1)  # A missing required key fails below, as a KeyError.
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise ValueError(
        f"hidden_size {hf['hidden_size']} is not a multiple of num_attention_heads "
        f"{hf['num_attention_heads']}"
      )
    return cls(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
      hidden_act=act,
      **overrides,
    )

  def to_hf(self) -> dict:
    """The Hugging Face config.json for this architecture (used by export)."""
    return {
      "architectures": ["BertModel"],
      "model_type": "bert",
      "hidden_act": self.hidden_act,
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "intermediate_size": self.intermediate_size,
      "max_position_embeddings": self.max_position_embeddings,
      "type_vocab_size": self.type_vocab_size,
      "layer_norm_eps": self.layer_norm_eps,
      "hidden_dropout_prob": self.hidden_dropout,
      "attention_probs_dropout_prob": self.attention_dropout,
      "position_embedding_type": "absolute",
      "pad_token_id": 0,
    }


def dense(config: BertConfig, layer: int, target: str, features: int) -> AdaptedDense:
  """The dense layer `target` of encoder layer `layer`, adapted if the config says so."""
  lora = config.lora if config.lora is not None and config.lora.applies_to(layer, target) else None
  return AdaptedDense(features, lora=lora, dtype=config.dtype, name=target)


class SelfAttention(nn.Module):
  config: BertConfig
  layer: int

  @nn.compact
  def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
    """x: the tokens [B * L, H] (see `BertEncoder`); mask_bias [B, 1, 1 or L, L]."""
    cfg = self.config
    b, l, h = mask_bias.shape[0], mask_bias.shape[-1], x.shape[-1]
    head_dim = h // cfg.num_heads

    def heads(t):
      return t.reshape(b, l, cfg.num_heads, head_dim)

    q = heads(dense(cfg, self.layer, "query", h)(x, deterministic))
    k = heads(dense(cfg, self.layer, "key", h)(x, deterministic))
    v = heads(dense(cfg, self.layer, "value", h)(x, deterministic))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    # Softmax in float32 even when computing in bfloat16.
    probs = jax.nn.softmax(scores.astype(jnp.float32) + mask_bias, axis=-1).astype(cfg.dtype)
    probs = Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b * l, h)
    return dense(cfg, self.layer, "attention_output", h)(context, deterministic)


class EncoderLayer(nn.Module):
  """One transformer layer on the tokens [B * L, H]; mask_bias [B, 1, 1 or L, L] gives B, L."""

  config: BertConfig
  layer: int

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    mask_bias: jax.Array,
    deterministic: bool,
    task: jax.Array | None = None,
    projections: PalsProjections | None = None,
  ) -> jax.Array:
    cfg = self.config
    h_in = x
    drop = Dropout(cfg.hidden_dropout)
    norm = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=jnp.float32, name=name)
    attn = SelfAttention(cfg, self.layer, name="attention")(x, mask_bias, deterministic)
    x = norm("attention_norm")(x + drop(attn, deterministic=deterministic)).astype(cfg.dtype)
    y = dense(cfg, self.layer, "intermediate", cfg.intermediate_size)(x, deterministic)
    y = exact_gelu(y) if cfg.hidden_act == "gelu" else OTHER_ACTIVATIONS[cfg.hidden_act](y)
    y = dense(cfg, self.layer, "output", cfg.hidden_size)(y, deterministic)
    y = x + drop(y, deterministic=deterministic)
    if cfg.task_layers is not None:  # LN(attention out + FFN out + TS_task(layer input)).
      b, l = mask_bias.shape[0], mask_bias.shape[-1]
      y = y + TaskLayer(cfg.task_layers, cfg.attention_dropout, cfg.dtype, name="task_layer")(
        h_in.reshape(b, l, -1), mask_bias, task, projections, deterministic
      ).reshape(y.shape)
    return norm("output_norm")(y).astype(cfg.dtype)


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout: ids [B, L] -> the tokens
  [B * L, H] (token-major, see the module docstring)."""

  config: BertConfig

  @nn.compact
  def __call__(
    self, input_ids, token_type_ids, deterministic: bool, position_ids: jax.Array | None = None
  ) -> jax.Array:
    cfg = self.config
    init = nn.initializers.normal(0.02)
    embed = lambda n, size: nn.Embed(size, cfg.hidden_size, embedding_init=init, name=n)
    positions = jnp.arange(input_ids.shape[-1])[None, :] if position_ids is None else position_ids
    # The looked-up word vectors, where a caller may read their gradient ("perturbations"
    # collection, `mtl_jax.step.WORD_VECTORS`); a no-op otherwise.
    words = self.perturb("word_vectors", embed("word_embeddings", cfg.vocab_size)(input_ids))
    x = (
      words
      + embed("position_embeddings", cfg.max_position_embeddings)(positions)
      + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids)
    )
    x = nn.LayerNorm(cfg.layer_norm_eps, name="layer_norm")(x.reshape(-1, cfg.hidden_size))
    return Dropout(cfg.hidden_dropout)(x, deterministic=deterministic).astype(cfg.dtype)


class BertEncoder(nn.Module):
  """input ids, attention mask, token types [B, L] -> last hidden state [B, L, H].

  Packed rows (several sequences per row, `mtl_jax.data.packing`) also give `segment_ids`
  (1, 2, ... per sequence, 0 = padding) and `position_ids` (restarting at 0 in every
  segment): a token then attends only to the tokens of its own segment (padding to
  padding), so each sequence's hidden states are those it would have alone.

  With task layers (config.task_layers) the encoder is task-specific: `task` (an index into
  the tasks, may be traced) is required.
  """

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    token_type_ids: jax.Array | None = None,
    deterministic: bool = True,
    task: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
  ) -> jax.Array:
    cfg = self.config
    projections = None
    if cfg.task_layers is not None:
      if task is None:
        raise ValueError(
          f"this encoder has task-specific {cfg.task_layers.kind} layers: "
          "give the task whose layers to use"
        )
      if cfg.task_layers.kind == "pals":
        projections = PalsProjections(cfg.task_layers, cfg.hidden_size, cfg.dtype, name="task_proj")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic, position_ids)
    # Additive mask: keys a query must not see get a large negative score (their softmax
    # weight is exactly 0). Over keys, [B, 1, 1, L]: padded keys; packed, block-diagonal
    # [B, 1, L, L]: keys of other segments.
    if segment_ids is None:
      allowed = attention_mask[:, None, None, :] > 0
    else:
      allowed = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    mask_bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, i, name=f"layer_{i}")(x, mask_bias, deterministic, task, projections)
    return x.reshape(*input_ids.shape, cfg.hidden_size).astype(jnp.float32)
