"""Sentence pooling and the three task heads (SST-5, Quora, STS-B), in every variant the
seed projects tried, selected by `HeadSpec` (config.heads) and the pooling (config.model.pooling).

Every task encodes the same number S of sequences per step (so the per-task batches stack
on a task axis and `vmap` over it). How a pair task fills its S rows (`HeadSpec.pairs`):
  bi     (the default) each sentence is encoded alone: S/2 pairs, first sentences in rows
         [0, S/2) and second sentences in rows [S/2, S); the pair heads compare row i
         with row S/2 + i.
  cross  a pair is one sequence [CLS] s1 [SEP] s2 [SEP] with token types (a cross-encoder):
         S pairs in S rows, and the pair heads read each row's pooled vector alone.

Pooling (`POOLINGS` are parameter-free; `concat` learns a dense layer):
  cls     the first token's hidden state                                  [S, H]
  mean    the mean over real tokens (the default)                         [S, H]
  concat  [tanh(W · mean); CLS], W a learned H -> H dense (heads/pool_dense) [S, 2H]

Sentence representation x_t of task t, from the pooled vectors p (`HeadSpec.kind`):
  linear        x_t = p (the default: each task's output layer reads p)
  shared        x_t = gelu(shared_dense(p)), one H-wide layer for all tasks
  multi_stream  x_t = [shared_dense(p); {t}_stream(p)], a shared and a task-specific
                linear layer (both H wide, no activation) side by side
Outputs (dropout before every learned output layer). Bi-encoded pairs (u, v = a pair's
two x_t rows; N = S/2 pairs):
  sst    linear -> 5 logits per sentence                                   [S, 5]
  quora  features: linear on [u; v; |u - v|; u * v] (default); dot: u . v;
         cosine: a . cos(u, v) + b (a learned, initialised to 5)  -> a logit [N]
  sts    cosine: 5 cos(u, v) (default); relu_cosine: 5 relu(cos(u, v));
         dot: u . v; features: linear on [u; v; |u - v|; u * v]        -> a score [N]
Cross-encoded pairs (x = the pair's x_t row; N = S pairs): only the learned heads exist,
selected by quora="features" and sts="features" (the pair's features are then x itself);
every value that compares u with v is refused (`BI_ENCODER_ONLY`):
  quora  linear on x -> a logit                                                 [N]
  sts    5 sigmoid(linear on x) -> a score in (0, 5)                             [N]
  The sigmoid keeps the score on the label scale, and starts it near the middle (2.5,
  close to the training labels' mean 2.6) while the head is still small: a raw linear
  output starts near 0, where the MSE is ~9 instead of ~2 and the STS gradient would
  dominate the first (clipped) updates of the shared encoder.
sts_loss="cosine" (sentence-transformers' CosineSimilarityLoss, bi only): the STS score r
is regressed onto label / 5; the heads then also output `sts_unit` = r and `sts` = 5 r
(the prediction on the 0..5 scale). With the default "mse", `sts` is regressed onto the label.
The cosine and dot pair scores are symmetric in (u, v); the features ones are not.

Parameter names: everything lives under `heads/`; task-specific layers are named after
their task (`sst`, `quora`, `sts`, `{task}_stream`), shared ones `shared_dense` and
`pool_dense`. `multitask.is_shared` marks only the encoder as shared, so gradient-surgery
methods treat the shared head layers like task-specific ones (each task's gradient on
them is simply summed by the optimizer's combination of the non-encoder leaves); that is
deliberate: surgery is about the encoder, and those layers are small.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax import tasks
from mtl_jax.models.dropout import Dropout

POOLINGS = ("cls", "mean")  # Parameter-free (usable on a bare encoder, e.g. mtl_jax.embed).
LEARNED_POOLINGS = ("concat",)
ALL_POOLINGS = POOLINGS + LEARNED_POOLINGS
KINDS = ("linear", "shared", "multi_stream")
QUORA_HEADS = ("features", "dot", "cosine")
STS_HEADS = ("cosine", "relu_cosine", "dot", "features")
STS_LOSSES = ("mse", "cosine")
PAIR_ENCODINGS = ("bi", "cross")
# Head values that compare two separately encoded sentence vectors u, v: no such vectors
# exist when a pair is cross-encoded as one sequence.
BI_ENCODER_ONLY = {
  "quora": ("dot", "cosine"),
  "sts": ("cosine", "relu_cosine", "dot"),
  "sts_loss": ("cosine",),
}
_VALUES = {
  "kind": KINDS,
  "quora": QUORA_HEADS,
  "sts": STS_HEADS,
  "sts_loss": STS_LOSSES,
  "pairs": PAIR_ENCODINGS,
}
NUM_SST_CLASSES = tasks.SPECS["sst"].num_classes


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """Which heads (config.heads); the defaults are the original baseline."""

  kind: str = "linear"
  quora: str = "features"
  sts: str = "cosine"
  sts_loss: str = "mse"
  pairs: str = "bi"

  def __post_init__(self):
    for name, allowed in _VALUES.items():
      value = getattr(self, name)
      if value not in allowed:
        raise ValueError(f"heads.{name}: {value!r} is not one of {allowed}")
    if self.pairs == "cross":
      for name, refused in BI_ENCODER_ONLY.items():
        value = getattr(self, name)
        if value in refused:
          usable = [v for v in _VALUES[name] if v not in refused]
          raise ValueError(
            f"heads.{name}: {value!r} compares two separately encoded sentence vectors, "
            f"but heads.pairs='cross' encodes a pair as one [CLS] s1 [SEP] s2 [SEP] "
            f"sequence; with it use heads.{name}={usable[0]!r}, or heads.pairs='bi'"
          )


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str, dense=None) -> jax.Array:
  """[B, L, H] hidden states -> [B, H] sentence vectors ([B, 2H] for concat), ignoring
  padding. `concat` needs `dense`, its learned H -> H layer (see `TaskHeads.pool`)."""
  if pooling == "cls":
    return hidden[:, 0]
  if pooling in ("mean", "concat"):
    mask = attention_mask[..., None].astype(hidden.dtype)
    mean = (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
    if pooling == "mean":
      return mean
    if dense is None:
      raise ValueError("concat pooling needs its learned dense layer (TaskHeads.pool)")
    return jnp.concatenate([jnp.tanh(dense(mean)), hidden[:, 0]], axis=-1)
  raise ValueError(f"unknown pooling {pooling!r}; expected one of {ALL_POOLINGS}")


def split_pairs(pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
  half = pooled.shape[0] // 2
  return pooled[:half], pooled[half : 2 * half]


def cosine(u: jax.Array, v: jax.Array, eps: float = 1e-8) -> jax.Array:
  """cos(u, v), 0 where a vector is ~0, with a finite gradient there too: an empty lane
  slot (`mtl_jax.data.packing` slots) pools to 0, and a norm's gradient at 0 is NaN, which
  its zero loss weight would not cancel."""
  num = (u * v).sum(-1)
  squares = (u * u).sum(-1) * (v * v).sum(-1)
  return num / jnp.sqrt(jnp.maximum(squares, eps * eps))


def pair_features(u: jax.Array, v: jax.Array) -> jax.Array:
  return jnp.concatenate([u, v, jnp.abs(u - v), u * v], axis=-1)


class TaskHeads(nn.Module):
  """Pooled vectors [S, D] (of sentences, or of cross-encoded pairs) -> every task's
  outputs on them (see the module doc).

  All heads are cheap, so the step computes all and the loss keeps its task's one.
  `hidden_size` (the encoder's H) is needed by the learned pooling and the shared /
  multi-stream layers only.
  """

  dropout: float = 0.1
  spec: HeadSpec = HeadSpec()
  pooling: str = "mean"
  hidden_size: int | None = None

  def setup(self):
    s = self.spec
    if (self.pooling in LEARNED_POOLINGS or s.kind != "linear") and not self.hidden_size:
      raise ValueError(f"pooling {self.pooling!r} / heads kind {s.kind!r} need hidden_size")
    # Named as the original compact module named it: same dropout RNG stream, same masks.
    self.Dropout_0 = Dropout(self.dropout)
    if self.pooling in LEARNED_POOLINGS:
      self.pool_dense = nn.Dense(self.hidden_size)
    if s.kind != "linear":
      self.shared_dense = nn.Dense(self.hidden_size)
    if s.kind == "multi_stream":
      for t in tasks.TASKS:
        setattr(self, f"{t}_stream", nn.Dense(self.hidden_size))
    self.sst = nn.Dense(NUM_SST_CLASSES)
    if s.quora == "features":
      self.quora = nn.Dense(1)
    elif s.quora == "cosine":
      self.quora = nn.Dense(1, kernel_init=nn.initializers.constant(5.0))
    if s.sts == "features":
      self.sts = nn.Dense(1)

  def pool(self, hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, L, H] -> pooled [B, D] with this model's pooling (and its learned layer)."""
    dense = self.pool_dense if self.pooling in LEARNED_POOLINGS else None
    return pool(hidden, attention_mask, self.pooling, dense)

  def _represent(self, pooled, task: str, deterministic: bool):
    kind = self.spec.kind
    if kind == "linear":
      return pooled
    dropped = self.Dropout_0(pooled, deterministic=deterministic)
    shared = self.shared_dense(dropped)
    if kind == "shared":
      return nn.gelu(shared)
    stream = getattr(self, f"{task}_stream")(dropped)
    return jnp.concatenate([shared, stream], axis=-1)

  def __call__(self, pooled: jax.Array, deterministic: bool = True) -> dict[str, jax.Array]:
    s, drop = self.spec, self.Dropout_0
    reps = {t: self._represent(pooled, t, deterministic) for t in tasks.TASKS}
    sst = self.sst(drop(reps["sst"], deterministic=deterministic))
    if s.pairs == "cross":  # One row per pair: the learned heads on its vector.
      quora = self.quora(drop(reps["quora"], deterministic=deterministic))[:, 0]
      sts = self.sts(drop(reps["sts"], deterministic=deterministic))[:, 0]
      return {"sst": sst, "quora": quora, "sts": 5.0 * jax.nn.sigmoid(sts)}

    u, v = split_pairs(reps["quora"])
    if s.quora == "features":
      quora = self.quora(drop(pair_features(u, v), deterministic=deterministic))[:, 0]
    elif s.quora == "dot":
      quora = (u * v).sum(-1)
    else:
      quora = self.quora(cosine(u, v)[:, None])[:, 0]

    u, v = split_pairs(reps["sts"])
    if s.sts == "cosine":
      score, scale = cosine(u, v), 5.0
    elif s.sts == "relu_cosine":
      score, scale = jax.nn.relu(cosine(u, v)), 5.0
    elif s.sts == "dot":
      score, scale = (u * v).sum(-1), 1.0
    else:
      score = self.sts(drop(pair_features(u, v), deterministic=deterministic))[:, 0]
      scale = 1.0
    if s.sts_loss == "cosine":
      return {"sst": sst, "quora": quora, "sts": 5.0 * score, "sts_unit": score}
    return {"sst": sst, "quora": quora, "sts": scale * score}
