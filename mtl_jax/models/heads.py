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
QUORA_HEADS = ("features", "dot", "cosine")  # Of a pair task with a binary label.
STS_HEADS = ("cosine", "relu_cosine", "dot", "features")  # Of a pair task with a score.
STS_LOSSES = ("mse", "cosine", "cosent")  # Of a task with a score (tasks.LOSSES["score"]).
PAIR_ENCODINGS = ("bi", "cross")
PAIR_TASKS = tuple(t.name for t in tasks.DEFAULT if t.is_pair)  # ("quora", "sts")
# Head values that compare two separately encoded sentence vectors u, v: no such vectors
# exist when a pair is cross-encoded as one sequence. Keyed by the config.heads key that
# sets them for the tasks that do not declare their own (`_DEFAULT_KEY`): refused only
# for a task that is cross-encoded.
BI_ENCODER_ONLY = {
  "quora": ("dot", "cosine"),
  "sts": ("cosine", "relu_cosine", "dot"),
  "sts_loss": ("cosine", "cosent"),
}
_VALUES = {
  "kind": KINDS,
  "quora": QUORA_HEADS,
  "sts": STS_HEADS,
  "sts_loss": STS_LOSSES,
}
NUM_SST_CLASSES = tasks.SPECS["sst"].num_classes


def head_choices(task: tasks.TaskSpec) -> tuple[str, ...]:
  """The heads a task can have, by its sentences and label (the first is the default
  where config.heads sets none): one sentence, or a pair of a class label, has one."""
  if not task.is_pair:
    return ("linear",)
  return {"binary": QUORA_HEADS, "score": STS_HEADS}.get(task.label, ("features",))


def _default_key(task: tasks.TaskSpec, field: str) -> str | None:
  """The config.heads key whose value a task takes when its declaration leaves `field`
  ('head' or 'loss') empty, or None (the kind's only value)."""
  if field == "loss":
    return "sts_loss" if task.label == "score" else None
  if task.is_pair and task.label in ("binary", "score"):
    return "quora" if task.label == "binary" else "sts"
  return None


def parse_pairs(value: str, pair_tasks: tuple[str, ...] = PAIR_TASKS) -> dict[str, str]:
  """config.heads.pairs -> {pair task: "bi" | "cross"}, in task-axis order.

  "bi" or "cross" encodes every pair task that way; a comma-separated list of
  task=encoding ("quora=cross", "quora=cross,sts=bi") sets the tasks it names, and a pair
  task it does not name is bi-encoded. ValueError naming heads.pairs otherwise."""
  if not isinstance(value, str):
    raise ValueError(f"heads.pairs: {value!r} is not a string")
  if value in PAIR_ENCODINGS:
    return dict.fromkeys(pair_tasks, value)
  out = dict.fromkeys(pair_tasks, "bi")
  named = set()
  for item in value.split(","):
    task, equals, encoding = (x.strip() for x in item.partition("="))
    problem = None
    if not equals:
      problem = f"{item.strip()!r} is not task=encoding"
    elif task not in pair_tasks:
      problem = f"{task!r} is not a pair task {pair_tasks}"
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
  """Which heads (config.heads, and each task's declared head and loss); the defaults are
  the original baseline. `tasks` are the run's tasks (tasks.TaskSpec, task-axis order):
  built, each task's head and loss are resolved (a declared one, else config.heads')."""

  kind: str = "linear"
  quora: str = "features"
  sts: str = "cosine"
  sts_loss: str = "mse"
  pairs: str = "bi"
  tasks: tuple[tasks.TaskSpec, ...] = tasks.DEFAULT

  def __post_init__(self):
    for name, allowed in _VALUES.items():
      value = getattr(self, name)
      if value not in allowed:
        raise ValueError(f"heads.{name}: {value!r} is not one of {allowed}")
    encodings = parse_pairs(self.pairs, tuple(t.name for t in self.tasks if t.is_pair))
    object.__setattr__(self, "tasks", tuple(self._resolve(t, encodings) for t in self.tasks))

  def _resolve(self, task: tasks.TaskSpec, encodings: dict[str, str]) -> tasks.TaskSpec:
    """`task` with its head and loss set (declared, or config.heads'), checked."""
    values = {}
    for field in ("head", "loss"):
      key = _default_key(task, field)
      declared = getattr(task, field)
      value = declared or (getattr(self, key) if key else "")
      if field == "head":
        value = value or head_choices(task)[0]
        if value not in head_choices(task):
          raise ValueError(
            f"tasks.{task.name}.head: {value!r} is not a head of a "
            f"{'pair' if task.is_pair else 'one-sentence'} task with label={task.label!r}; "
            f"use one of {head_choices(task)}"
          )
      else:
        value = value or tasks.LOSSES[task.label][0]
      refused = BI_ENCODER_ONLY.get(key, ()) if key else ()
      if value in refused and encodings.get(task.name) == "cross":
        where = f"tasks.{task.name}.{field}" if declared else f"heads.{key}"
        usable = [v for v in _VALUES[key] if v not in refused]
        instead = format_pairs({**encodings, task.name: "bi"})
        raise ValueError(
          f"{where}: {value!r} compares two separately encoded sentence vectors, "
          f"but heads.pairs={self.pairs!r} encodes each {task.name} pair as one [CLS] s1 "
          f"[SEP] s2 [SEP] sequence; with it use {where}={usable[0]!r}, or "
          f"heads.pairs={instead!r}"
        )
      values[field] = value
    return dataclasses.replace(task, **values)

  @property
  def names(self) -> tuple[str, ...]:
    """The tasks' names, in task-axis order."""
    return tuple(t.name for t in self.tasks)

  def cross(self, task: str) -> bool:
    """Whether task `task`'s pairs are cross-encoded (False for a single-sentence task)."""
    pair_tasks = tuple(t.name for t in self.tasks if t.is_pair)
    return parse_pairs(self.pairs, pair_tasks).get(task) == "cross"

  @property
  def cross_tasks(self) -> tuple[str, ...]:
    """The cross-encoded tasks, in task-axis order."""
    return tuple(t.name for t in self.tasks if self.cross(t.name))

  @property
  def batch_ranked_tasks(self) -> tuple[str, ...]:
    """The tasks whose loss ranks the examples of a batch against each other (CoSENT), so
    that a batch split into parts would change it: packing keeps each of them in one lane."""
    return tuple(t.name for t in self.tasks if t.loss == "cosent")


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
      for t in s.tasks:
        setattr(self, f"{t.name}_stream", nn.Dense(self.hidden_size))
    for t in s.tasks:  # Each task's output layer is named after it; parameter-free heads have none.
      if t.num_classes:
        setattr(self, t.name, nn.Dense(t.num_classes))
      elif t.head == "cosine" and t.label == "binary":
        setattr(self, t.name, nn.Dense(1, kernel_init=nn.initializers.constant(5.0)))
      elif t.head in ("linear", "features") or s.cross(t.name):
        setattr(self, t.name, nn.Dense(1))

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
    tasks_ = self.spec.tasks
    reps = {t.name: self._represent(pooled, t.name, deterministic) for t in tasks_}
    drop = lambda x: self.Dropout_0(x, deterministic=deterministic)
    out = {}
    for t in tasks_:  # In task-axis order: the dropout masks are drawn in call order.
      layer = getattr(self, t.name, None)
      if not t.is_pair or self.spec.cross(t.name):
        out.update(_one_row(t, layer, drop(reps[t.name])))
      else:
        out.update(_bi_pair(t, layer, reps[t.name], drop))
    return out


def _one_row(t: tasks.TaskSpec, layer, x) -> dict[str, jax.Array]:
  """A task whose example is one row (a sentence, or a cross-encoded pair): its learned
  layer on the row's (dropped-out) vector. A score is max_score sigmoid(linear): on the
  label scale, near its middle while the layer is small."""
  if t.label == "class":
    return {t.name: layer(x)}
  if t.label == "binary":
    return {t.name: layer(x)[:, 0]}
  return {t.name: t.max_score * jax.nn.sigmoid(layer(x)[:, 0])}


def _bi_pair(t: tasks.TaskSpec, layer, x, drop) -> dict[str, jax.Array]:
  """A bi-encoded pair task: its head compares the pair's two rows u, v."""
  u, v = split_pairs(x)
  if t.label == "class":
    return {t.name: layer(drop(pair_features(u, v)))}
  if t.label == "binary":
    if t.head == "features":
      return {t.name: layer(drop(pair_features(u, v)))[:, 0]}
    if t.head == "dot":
      return {t.name: (u * v).sum(-1)}
    return {t.name: layer(cosine(u, v)[:, None])[:, 0]}
  if t.head == "cosine":
    score, scale = cosine(u, v), t.max_score
  elif t.head == "relu_cosine":
    score, scale = jax.nn.relu(cosine(u, v)), t.max_score
  elif t.head == "dot":
    score, scale = (u * v).sum(-1), 1.0
  else:
    score, scale = layer(drop(pair_features(u, v)))[:, 0], 1.0
  if t.loss == "cosine":
    return {t.name: t.max_score * score, f"{t.name}_unit": score}
  if t.loss == "cosent":
    return {t.name: scale * score, f"{t.name}_rank": score}
  return {t.name: scale * score}
