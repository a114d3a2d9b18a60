"""Benchmark of the train step: speed, FLOP/s and memory, printed as one table.

  python -m mtl_jax.bench [--methods=summed,sum,pcgrad,cagrad,mgda] [--modes=lora,full]
      [--seqs_per_task=64] [--length=64 | --real_lengths] [--steps=10] [--model=DIR]
      [--task_specific_top=0] [--tasks=3]
  python -m mtl_jax.bench --sharding [--devices=4] [--modes=lora,full] [--model=DIR]

Each (method, mode) runs in its own process (so peak memory is its own) on the bundled
model (or --model, any Hugging Face BERT directory, e.g. the BERT-base layout written by
scripts/make_bert_base.py) with fixed shapes [--tasks, seqs_per_task, length] and random
tokens, or with `--real_lengths` on the trainer's own batches: the first steps of the
batch stream of configs/default.py at --seqs_per_task (real training sentences, packed as
in training, so a few row shapes; each shape is compiled before timing, and the header
gives the real and computed tokens per step). Every table starts with the machine line
(mtl_jax.runtime.machine): CPU, vector ISA, cores, versions and the matmul peak measured in the
same run. `--tasks=T` times T tasks: the CS224N tasks in turn (sst, quora, sts, sst_2,
quora_2, ...; `repeated_tasks`), each with its own head, for how the step grows with the
number of tasks (random tokens: the copies read no data). `--sharding` prints instead the per-device bytes of parameters and optimizer
state, replicated vs `train.param_sharding=fsdp`, on --devices forced CPU devices
(mtl_jax.shard_memory).

`summed` is the gradient of the summed loss and nothing else: the trainer's `sum` step
without the between-task gradient statistics. Every other method's row is the trainer's
step with that mtl_jax.grad method and the statistics on every step (the trainer computes
them on its logged steps only), so "vs summed" is the cost of the statistics plus the
method ("-" when no summed row ran). Like the trainer, `summed` computes the gradient per
vmap lane and sums the lanes: on XLA:CPU one gradient of the summed loss is slower, as its
weight products contract over lanes and tokens at once and XLA transposes the activations
for them (`python -m benchmarks.compare_step full --variants summed` times both). FLOPs are XLA's count for the compiled step; the peak is a dense f32
matmul measured in the same run.
"""

from __future__ import annotations

import functools
import json
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from mtl_jax.runtime import machine
from mtl_jax.tools import cli

FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_METHODS = flags.DEFINE_list(
  "methods",
  ["summed", "sum", "pcgrad", "cagrad", "mgda"],
  "Gradient methods ('summed' = gradient of the summed loss).",
  flag_values=FLAGS,
)
_MODES = flags.DEFINE_list(
  "modes", ["lora", "full", "probe"], "Fine-tuning modes (adapter.kind).", flag_values=FLAGS
)
_SEQS_PER_TASK = flags.DEFINE_integer(
  "seqs_per_task", 64, "Sequences per task per step.", flag_values=FLAGS
)
_LENGTH = flags.DEFINE_integer("length", 64, "Sequence length.", flag_values=FLAGS)
_REAL_LENGTHS = flags.DEFINE_bool(
  "real_lengths",
  False,
  "Time the trainer's packed batches of real training sentences instead of random tokens "
  "at --length.",
  flag_values=FLAGS,
)
_STEPS = flags.DEFINE_integer(
  "steps", 10, "Timed steps (after 2 warm-up steps).", flag_values=FLAGS
)
_MODEL = flags.DEFINE_string(
  "model", None, "Hugging Face BERT directory (default: the bundled model).", flag_values=FLAGS
)
_SHARDING = flags.DEFINE_bool(
  "sharding",
  False,
  "Print per-device parameter + optimizer-state bytes, replicated vs fsdp, instead of "
  "timing steps.",
  flag_values=FLAGS,
)
_DEVICES = flags.DEFINE_integer(
  "devices", 4, "With --sharding: forced CPU devices.", flag_values=FLAGS
)
_TASK_SPECIFIC_TOP = flags.DEFINE_integer(
  "task_specific_top",
  0,
  "adapter.task_specific_top of every configuration: the top N encoder layers copied per task.",
  lower_bound=0,
  flag_values=FLAGS,
)
_TASKS = flags.DEFINE_integer(
  "tasks",
  3,
  "Tasks per step: the CS224N tasks in turn (sst, quora, sts, sst_2, ...), with random tokens.",
  lower_bound=1,
  flag_values=FLAGS,
)
_ONE = flags.DEFINE_string(
  "one", None, "Internal: run one 'method:mode' and print JSON.", flag_values=FLAGS
)


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n^3 float32 matmul through XLA on this machine, now."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / min(times)


def model_line(model_path: str | None) -> str:
  """ "model: <dir> (12 layers, hidden 768, 12 heads, vocab 30522)": the model the table is of."""
  from mtl_jax.config import defaults as default
  from mtl_jax.models import hf_io

  path = model_path or default.get_config().model.path
  c = hf_io.read_config(path)
  return (
    f"model: {path} ({c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
    f"vocab {c.vocab_size})"
  )


def random_batch(tasks: int, seqs_per_task: int, length: int, vocab_size: int) -> dict:
  """A fixed-shape step batch of random tokens, full length (seeded: the same every call)."""
  rng = np.random.default_rng(0)
  shape = (tasks, seqs_per_task, length)
  return {
    "input_ids": rng.integers(5, vocab_size, shape).astype(np.int32),
    "attention_mask": np.ones(shape, np.int32),
    "token_type_ids": np.zeros(shape, np.int32),
    "labels": rng.integers(0, 2, shape[:2]).astype(np.float32),
    "weights": np.ones(shape[:2], np.float32),
  }


def real_batches(config, steps: int, positions: int) -> list[dict]:
  """Steps 0..steps-1 of the batch stream a run of `config` trains on (packed as in training),
  its sequences cut at the model's `positions` where those are fewer than model.max_length."""
  from mtl_jax import train
  from mtl_jax.config import run_spec

  spec = run_spec.build(fit_to_model(config, positions))
  data = train.load_data(spec, spec.tokenizer())
  batches = train.train_batches(spec, data["train"])
  return [batches(k) for k in range(steps)]


def fit_to_model(config, positions: int):
  """A copy of `config` whose model.max_length and length buckets fit a model of
  `positions` positions (the bench runs configs/default.py on any model)."""
  config = config.copy_and_resolve_references()
  config.model.max_length = min(config.model.max_length, positions)
  buckets = [b for b in config.train.length_buckets if b <= config.model.max_length]
  config.train.length_buckets = tuple(buckets) or (config.model.max_length,)
  return config


def repeated_tasks(config, num_tasks: int) -> None:
  """config's tasks become the first `num_tasks` of sst, quora, sts, sst_2, quora_2, sts_2,
  sst_3, ...: copies of the CS224N declarations, each trained with its own head."""
  from mtl_jax import tasks
  from mtl_jax.config import defaults as default

  names = []
  for k in range(num_tasks):
    base = tasks.TASKS[k % len(tasks.TASKS)]
    name = base if k < len(tasks.TASKS) else f"{base}_{k // len(tasks.TASKS) + 1}"
    if name not in config.tasks:  # A copy writes its own prediction files, <name>-*.
      declaration = {k: v for k, v in tasks.CS224N[base].items() if k != "prediction_prefix"}
      default.add_task(config, name, **declaration)
    names.append(name)
  config.task_order = tuple(names)


def bench_config(
  method: str,
  mode: str,
  seqs_per_task: int,
  model_path: str | None,
  task_specific_top: int = 0,
  num_tasks: int = 3,
):
  """configs/default.py as one bench configuration runs it ("summed": grad.method sum),
  over `num_tasks` tasks (`repeated_tasks`)."""
  from mtl_jax.config import defaults as default

  config = default.get_config()
  repeated_tasks(config, num_tasks)
  config.model.path = model_path or config.model.path
  config.adapter.kind = mode
  config.adapter.task_specific_top = task_specific_top
  config.grad.method = "sum" if method == "summed" else method
  config.train.seqs_per_task = seqs_per_task
  return config


def _jitted_step(config, statistics: bool):
  """(spec, model, state, frozen, jitted step) of a bench configuration (`bench_config`),
  with or without the gradient statistics."""
  import jax

  from mtl_jax import train
  from mtl_jax.config import run_spec
  from mtl_jax.models import hf_io
  from mtl_jax.runtime import xla_options
  from mtl_jax.step import make_train_step

  positions = hf_io.read_config(config.model.path).max_position_embeddings
  spec = run_spec.build(fit_to_model(config, positions))
  model, state, frozen, tx = train.init_state(spec)
  step = functools.partial(
    make_train_step(model, tx, tuple(range(len(spec.tasks))), config.seed, smart=spec.smart),
    statistics=statistics,
  )
  jitted = jax.jit(step, donate_argnums=(0,), compiler_options=xla_options.train_step_options())
  return spec, model, state, frozen, jitted


def step_runner(
  method: str, mode: str, seqs_per_task: int = 64, length: int = 64, model_path: str | None = None
):
  """A function that runs one step of a fixed-shape bench configuration (compiled and warmed
  up here), waits for it and returns its loss: for timing the step alternately with other
  work in one process (`benchmarks/torch_reference.py --with_jax`), so that a shared host's
  changing load falls on both alike. Its `compiled` attribute is the compiled step (for its
  HLO text: `benchmarks/profile_step.py`)."""
  import jax

  config = bench_config(method, mode, seqs_per_task, model_path)
  spec, model, state, frozen, jitted = _jitted_step(config, method != "summed")
  batch = random_batch(len(spec.tasks), seqs_per_task, length, model.config.vocab_size)
  compiled = jitted.lower(state, frozen, batch).compile()
  holder = [state]

  def run() -> float:
    holder[0], metrics = compiled(holder[0], frozen, batch)
    jax.block_until_ready((holder[0], metrics))
    return float(metrics["loss"])

  run()
  run.compiled = compiled
  return run


def run_one(
  method: str,
  mode: str,
  seqs_per_task: int,
  length: int,
  steps: int,
  model_path: str | None = None,
  real_lengths: bool = False,
  task_specific_top: int = 0,
  num_tasks: int = 3,
) -> dict:
  """Times one jitted train step configuration (the trainer's step, `step.make_train_step`,
  for "summed" without the gradient statistics, compiled as the trainer compiles it);
  returns the row of the table."""
  import jax

  config = bench_config(method, mode, seqs_per_task, model_path, task_specific_top, num_tasks)
  spec, model, state, frozen, jitted = _jitted_step(config, method != "summed")
  batch = random_batch(len(spec.tasks), seqs_per_task, length, model.config.vocab_size)
  # Warm-up: every distinct shape compiled (AOT, so its FLOPs are read), then run twice.
  step_batches = (
    real_batches(config, steps + 2, model.config.max_position_embeddings)
    if real_lengths
    else [batch] * (steps + 2)
  )
  compiled, shape_flops = {}, {}
  for b in step_batches:
    shape = b["input_ids"].shape
    if shape not in compiled:
      compiled[shape] = jitted.lower(state, frozen, b).compile()
      shape_flops[shape] = _flops(compiled[shape])
  for b in step_batches[:2]:
    state, _ = compiled[b["input_ids"].shape](state, frozen, b)
  jax.block_until_ready(state)
  times, flops, tokens = [], [], np.zeros(2)
  for b in step_batches[2:]:
    start = time.perf_counter()
    state, metrics = compiled[b["input_ids"].shape](state, frozen, b)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    flops.append(shape_flops[b["input_ids"].shape])
    tokens += b["attention_mask"].sum(), b["attention_mask"].size
  step_s = float(np.median(times))
  flops = float(np.mean(flops))  # Per step; the same for every step at a fixed length.
  # A bi-encoded pair is two sequences of the task's seqs_per_task.
  examples = sum(
    seqs_per_task // 2 if t.is_pair and not spec.cross_encoded(t.name) else seqs_per_task
    for t in spec.tasks
  )
  opt_bytes = sum(
    x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state) if hasattr(x, "nbytes")
  )
  return {
    "method": method,
    "mode": mode,
    "step_s": step_s,
    "examples_per_s": examples / step_s,
    "flops_per_step": float(flops),
    "flops_per_s": float(flops) / step_s,
    "opt_state_mib": opt_bytes / 2**20,
    "trainable": int(sum(x.size for x in jax.tree_util.tree_leaves(state.trainable))),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "real_tokens": float(tokens[0] / steps),
    "computed_tokens": float(tokens[1] / steps),
    "shapes": len(compiled),
    "lanes": int(step_batches[0]["input_ids"].shape[0]),  # Tasks, or their slots when packed.
    "tasks": len(spec.tasks),
  }


def _flops(compiled) -> float:
  """XLA's FLOP count of a compiled step (nan where the backend gives none)."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # Older jax returns one dict per computation.
    cost = cost[0] if cost else {}
  return float(cost.get("flops", float("nan")))


def table(rows: list[dict], peak: float, header: str = "") -> str:
  """The markdown table, after `header` (the machine and shapes lines). "vs summed" is
  the step time over the summed step's of the same mode, "-" when that was not run."""
  summed = {r["mode"]: r["step_s"] for r in rows if r["method"] == "summed"}
  lines = ([header, ""] if header else []) + [
    "| mode | method | step s | examples/s | GFLOP/step | GFLOP/s | % of peak | "
    "vs summed | trainable | opt state MiB | peak RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    rel = f"{r['step_s'] / summed[r['mode']]:.2f}x" if r["mode"] in summed else "-"
    lines.append(
      f"| {r['mode']} | {r['method']} | {r['step_s']:.2f} | {r['examples_per_s']:.1f} | "
      f"{r['flops_per_step'] / 1e9:.0f} | {r['flops_per_s'] / 1e9:.0f} | "
      f"{100 * r['flops_per_s'] / peak:.0f}% | {rel} | {r['trainable']:,} | "
      f"{r['opt_state_mib']:.1f} | {r['peak_rss_mib']:.0f} |"
    )
  return "\n".join(lines)


def shapes_line(rows: list[dict], real_lengths: bool) -> str:
  """What the rows timed: the fixed shape, or the real batches' shapes and tokens."""
  s, n, t = _SEQS_PER_TASK.value, _STEPS.value, _TASKS.value
  if not real_lengths or not rows:
    return (
      f"shapes: {t} tasks x {s} sequences x {_LENGTH.value} tokens, f32; "
      f"median of {n} steps after 2 warm-up steps"
    )
  r = rows[0]  # Every row times the same batches.
  return (
    f"real lengths: steps 2-{n + 1} of configs/default.py's packed batch stream, {t} tasks x {s} "
    f"sequences in {r['lanes']} vmap lanes, f32, {r['shapes']} row shape{'s' * (r['shapes'] != 1)} (compiled first); per step "
    f"{r['real_tokens']:,.0f} real of {r['computed_tokens']:,.0f} computed tokens "
    f"({100 * (1 - r['real_tokens'] / r['computed_tokens']):.1f}% padding); median of {n} steps"
  )


def run_in_process(method: str, mode: str, **flag_values) -> dict | None:
  """The row of one configuration timed in a process of its own (so that its peak memory is
  its own): this tool with `--one=METHOD:MODE` and the given flag values; None, with the
  process's error printed, if it failed."""
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "mtl_jax.bench",
      f"--one={method}:{mode}",
      *(f"--{k}={v}" for k, v in flag_values.items()),
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  if out.returncode != 0:
    print(f"{method}:{mode} {flag_values} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _ONE.value:
    method, mode = _ONE.value.split(":")
    print(
      json.dumps(
        run_one(
          method,
          mode,
          _SEQS_PER_TASK.value,
          _LENGTH.value,
          _STEPS.value,
          _MODEL.value,
          _REAL_LENGTHS.value,
          _TASK_SPECIFIC_TOP.value,
          _TASKS.value,
        )
      )
    )
    return 0
  if _SHARDING.value:
    from mtl_jax.tools import shard_memory

    print(shard_memory.run(_MODES.value, _DEVICES.value, _MODEL.value, model_line(_MODEL.value)))
    return 0
  check_arguments(
    _METHODS.value,
    _MODES.value,
    _SEQS_PER_TASK.value,
    _LENGTH.value,
    _STEPS.value,
    _MODEL.value,
    _TASK_SPECIFIC_TOP.value,
    _TASKS.value,
  )
  start = machine.cpu_times()
  peak = matmul_peak_flops()
  rows, failed = [], []
  for mode in _MODES.value:
    for method in _METHODS.value:
      row = run_in_process(
        method,
        mode,
        seqs_per_task=_SEQS_PER_TASK.value,
        length=_LENGTH.value,
        steps=_STEPS.value,
        real_lengths=_REAL_LENGTHS.value,
        task_specific_top=_TASK_SPECIFIC_TOP.value,
        tasks=_TASKS.value,
        **({"model": _MODEL.value} if _MODEL.value else {}),
      )
      if row is None:
        failed.append(f"{method}:{mode}")
        continue
      rows.append(row)
      print(f"done {method}:{mode}: {rows[-1]['step_s']:.2f} s/step", file=sys.stderr)
  copies = _TASK_SPECIFIC_TOP.value
  header = "\n".join(
    [machine.machine_line(peak), model_line(_MODEL.value), shapes_line(rows, _REAL_LENGTHS.value)]
    + (
      [f"adapter.task_specific_top={copies}: the top {copies} layers copied per task"]
      if copies
      else []
    )
  )
  print("\n" + table(rows, peak, header))
  print(machine.steal_line(start, machine.cpu_times()))
  if failed:
    print(f"bench: {len(failed)} configuration(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def check_arguments(
  methods: list[str],
  modes: list[str],
  seqs_per_task: int,
  length: int,
  steps: int,
  model_path: str | None,
  task_specific_top: int = 0,
  num_tasks: int = 3,
) -> None:
  """app.UsageError for a value no configuration could run, before any is started: each
  (method, mode) as the trainer's config check sees it, the model, --length, --steps."""
  from mtl_jax.config import run_spec
  from mtl_jax.models import hf_io

  if steps < 1:
    raise app.UsageError(f"--steps must be >= 1, got {steps}")
  if not methods or not modes:
    raise app.UsageError("--methods and --modes each need at least one name")
  try:
    path = bench_config(methods[0], modes[0], seqs_per_task, model_path).model.path
    positions = hf_io.read_config(path).max_position_embeddings
    run_spec.check_max_length(length, positions, "--length", path)
    for method in methods:
      for mode in modes:
        config = bench_config(method, mode, seqs_per_task, model_path, task_specific_top, num_tasks)
        config.model.max_length, config.train.length_buckets = length, (length,)
        run_spec.build(config)
  except (run_spec.ConfigError, hf_io.CheckpointError) as e:
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  from mtl_jax.runtime import hugepages

  hugepages.reexec_with_huge_pages()
  cli.run(main, FLAGS)
