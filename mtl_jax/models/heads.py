"""Sentence pooling and the three task heads (SST-5, Quora, STS-B), in every variant the
seed projects tried, selected by `HeadSpec` (config.heads) and the pooling (config.model.pooling).

Every task encodes the same number S of sequences per step (so the per-task batches stack
on a task axis and `vmap` over it). How a pair task fills its S rows (`HeadSpec.pairs`):
  bi     (the default) each sentence is encoded alone: S/2 pairs, first sentences in rows
         [0, S/2) and second sentences in rows [S/2, S); the pair heads compare row i
         with row S/2 + i.
  cross  a pair is one sequence [CLS] s1 [SEP] s2 [SEP] with token types (a cross-encoder):
         S pairs in S rows, and the pair heads read each row's pooled vector alone.
The choice is per pair task (`parse_pairs`): "bi" or "cross" for both, or e.g.
"quora=cross" (Quora cross-encoded, STS bi-encoded). Each head reads the rows of its own
task's layout, so one compiled step serves tasks encoded either way.

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
every value that compares u with v is refused for a cross-encoded task (`BI_ENCODER_ONLY`):
  quora  linear on x -> a logit                                                 [N]
  sts    5 sigmoid(linear on x) -> a score in (0, 5)                             [N]
  The sigmoid keeps the score on the label scale, and starts it near the middle (2.5,
  close to the training labels' mean 2.6) while the head is still small: a raw linear
  output starts near 0, where the MSE is ~9 instead of ~2 and the STS gradient would
  dominate the first (clipped) updates of the shared encoder.
sts_loss="cosine" (sentence-transformers' CosineSimilarityLoss, bi only): the STS score r
is regressed onto label / 5; the heads then also output `sts_unit` = r and `sts` = 5 r
(the prediction on the 0..5 scale). With the default "mse", `sts` is regressed onto the label.
sts_loss="cosent" (Su 2022, CoSENT; sentence-transformers' CoSENTLoss, bi only): the heads
also output `sts_rank` = r, the pair score before the 0..5 scale (cos(u, v) for the cosine
head, u . v for dot, the linear output for features), which `mtl_jax.step.cosent` ranks
within the batch; `sts` is the prediction as with "mse" (5 cos for the cosine head).
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
STS_LOSSES = ("mse", "cosine", "cosent")
PAIR_ENCODINGS = ("bi", "cross")
PAIR_TASKS = tuple(t for t in tasks.TASKS if tasks.SPECS[t].is_pair)  # ("quora", "sts")
# Head values that compare two separately encoded sentence vectors u, v: no such vectors
# exist when a pair is cross-encoded as one sequence. Each key belongs to one pair task
# (`_KEY_TASK`), and is refused only when that task is cross-encoded.
BI_ENCODER_ONLY = {
  "quora": ("dot", "cosine"),
  "sts": ("cosine", "relu_cosine", "dot"),
  "sts_loss": ("cosine", "cosent"),
}
_KEY_TASK = {"quora": "quora", "sts": "sts", "sts_loss": "sts"}
_VALUES = {
  "kind": KINDS,
  "quora": QUORA_HEADS,
  "sts": STS_HEADS,
  "sts_loss": STS_LOSSES,
}
NUM_SST_CLASSES = tasks.SPECS["sst"].num_classes


def parse_pairs(value: str) -> dict[str, str]:
  """config.heads.pairs -> {pair task: "bi" | "cross"}, in TASKS order.

  "bi" or "cross" encodes every pair task that way; a comma-separated list of
  task=encoding ("quora=cross", "quora=cross,sts=bi") sets the tasks it names, and a pair
  task it does not name is bi-encoded. ValueError naming heads.pairs otherwise."""
  if not isinstance(value, str):
    raise ValueError(f"heads.pairs: {value!r} is not a string")
  if value in PAIR_ENCODINGS:
    return dict.fromkeys(PAIR_TASKS, value)
  out = dict.fromkeys(PAIR_TASKS, "bi")
  named = set()
  for item in value.split(","):
    task, equals, encoding = (x.strip() for x in item.partition("="))
    problem = None
    if not equals:
      problem = f"{item.strip()!r} is not task=encoding"
    elif task not in PAIR_TASKS:
      problem = f"{task!r} is not a pair task {PAIR_TASKS}"
    elif encoding not in PAIR_ENCODINGS:
      problem = f"{encoding!r} (for {task}) is not one of {PAIR_ENCODINGS}"
    elif task in named:
      problem = f"{task} is given twice"
    if problem:
      raise ValueError(
        f"heads.pairs: {value!r}: {problem}; use one of {PAIR_ENCODINGS} for every pair "
        "task, or per task, e.g. 'quora=cross,sts=bi'"
      )
    named.add(task)
    out[task] = encoding
  return out


def format_pairs(encodings: dict[str, str]) -> str:
  """{pair task: encoding} -> the shortest heads.pairs value for it ("bi", "cross",
  "quora=cross"): what an error message suggests."""
  if len(set(encodings.values())) == 1:
    return next(iter(encodings.values()))
  return ",".join(f"{t}=cross" for t, e in encodings.items() if e == "cross")


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
    encodings = parse_pairs(self.pairs)
    for name, refused in BI_ENCODER_ONLY.items():
      value, task = getattr(self, name), _KEY_TASK[name]
      if value in refused and encodings[task] == "cross":
        usable = [v for v in _VALUES[name] if v not in refused]
        instead = format_pairs({**encodings, task: "bi"})
        raise ValueError(
          f"heads.{name}: {value!r} compares two separately encoded sentence vectors, "
          f"but heads.pairs={self.pairs!r} encodes each {task} pair as one [CLS] s1 [SEP] s2 "
          f"[SEP] sequence; with it use heads.{name}={usable[0]!r}, or heads.pairs={instead!r}"
        )

  def cross(self, task: str) -> bool:
    """Whether task `task`'s pairs are cross-encoded (False for a single-sentence task)."""
    return parse_pairs(self.pairs).get(task) == "cross"

  @property
  def cross_tasks(self) -> tuple[str, ...]:
    """The cross-encoded tasks, in TASKS order."""
    return tuple(t for t, e in parse_pairs(self.pairs).items() if e == "cross")

  @property
  def batch_ranked_tasks(self) -> tuple[str, ...]:
    """The tasks whose loss ranks the examples of a batch against each other (CoSENT), so
    that a batch split into parts would change it: packing keeps each of them in one lane."""
    return ("sts",) if self.sts_loss == "cosent" else ()


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
    reps = {t: self._represent(pooled, t, deterministic) for t in tasks.TASKS}
    drop = lambda x: self.Dropout_0(x, deterministic=deterministic)
    # In this order (sst, quora, sts): the dropout masks are drawn in call order.
    out = {"sst": self.sst(drop(reps["sst"]))}
    out["quora"] = self._quora(reps["quora"], drop)
    return {**out, **self._sts(reps["sts"], drop)}

  def _quora(self, x, drop) -> jax.Array:
    if self.spec.cross("quora"):  # One row per pair: the learned head on its vector.
      return self.quora(drop(x))[:, 0]
    u, v = split_pairs(x)
    if self.spec.quora == "features":
      return self.quora(drop(pair_features(u, v)))[:, 0]
    if self.spec.quora == "dot":
      return (u * v).sum(-1)
    return self.quora(cosine(u, v)[:, None])[:, 0]

  def _sts(self, x, drop) -> dict[str, jax.Array]:
    s = self.spec
    if s.cross("sts"):  # One row per pair: 5 sigmoid(linear) keeps the score on 0..5.
      return {"sts": 5.0 * jax.nn.sigmoid(self.sts(drop(x))[:, 0])}
    u, v = split_pairs(x)
    if s.sts == "cosine":
      score, scale = cosine(u, v), 5.0
    elif s.sts == "relu_cosine":
      score, scale = jax.nn.relu(cosine(u, v)), 5.0
    elif s.sts == "dot":
      score, scale = (u * v).sum(-1), 1.0
    else:
      score, scale = self.sts(drop(pair_features(u, v)))[:, 0], 1.0
    if s.sts_loss == "cosine":
      return {"sts": 5.0 * score, "sts_unit": score}
    if s.sts_loss == "cosent":
      return {"sts": scale * score, "sts_rank": score}
    return {"sts": scale * score}
