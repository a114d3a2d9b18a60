"""Sentence pooling and the three task heads (SST-5, Quora, STS-B).

Every task encodes the same number of sequences per step (so the per-task batches stack
on a task axis and `vmap` over it). A pair task's batch of S sequences holds S/2 pairs,
first sentences in rows [0, S/2) and second sentences in rows [S/2, S): the bi-encoder
heads compare row i with row S/2 + i.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.dropout import Dropout

POOLINGS = ("cls", "mean")
NUM_SST_CLASSES = 5


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """[B, L, H] hidden states -> [B, H] sentence vectors, ignoring padding."""
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    mask = attention_mask[..., None].astype(hidden.dtype)
    return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
  raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def split_pairs(pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
  half = pooled.shape[0] // 2
  return pooled[:half], pooled[half:2 * half]


def cosine(u: jax.Array, v: jax.Array, eps: float = 1e-8) -> jax.Array:
  num = (u * v).sum(-1)
  return num / jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)


class TaskHeads(nn.Module):
  """Pooled sentence vectors [S, H] -> every task's outputs on them.

  sst:   dropout + linear -> 5 logits per sentence                      [S, 5]
  quora: dropout + linear on [u; v; |u - v|; u * v] -> one logit per pair [S/2]
  sts:   5 * cos(u, v), a similarity on the label's 0..5 scale           [S/2]
  All three are cheap, so the step computes all and the loss keeps its task's one.
  """

  dropout: float = 0.1

  @nn.compact
  def __call__(self, pooled: jax.Array, deterministic: bool = True) -> dict[str, jax.Array]:
    drop = Dropout(self.dropout)
    sst = nn.Dense(NUM_SST_CLASSES, name="sst")(drop(pooled, deterministic=deterministic))
    u, v = split_pairs(pooled)
    features = jnp.concatenate([u, v, jnp.abs(u - v), u * v], axis=-1)
    quora = nn.Dense(1, name="quora")(drop(features, deterministic=deterministic))[:, 0]
    sts = 5.0 * cosine(u, v)
    return {"sst": sst, "quora": quora, "sts": sts}
