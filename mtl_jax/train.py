"""Training and evaluation loop: config + workdir in, dev metrics out.

The config is checked and built once into a RunSpec (mtl_jax.config.run_spec); everything
below takes the spec. Sections: input, model and step, checkpoints, loop, final
evaluation. Everything a run
produces lives in the workdir: config.json, checkpoints/, metrics.jsonl, TensorBoard
events, predictions/, results.json (written last: the run is finished), and with
train.eval_every > 0 best_checkpoint/ and best.json. The step runs data-parallel over
every device (mtl_jax.runtime.parallel).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mtl_jax.config import resume, run_spec, upgrade
from mtl_jax.config.run_spec import RunSpec
from mtl_jax.data import batching, files, packing, schedules
from mtl_jax.evaluate import evaluate, make_predict_fn, predict_split, write_split_predictions
from mtl_jax.models import multitask
from mtl_jax.optim import averaging
from mtl_jax.runtime import checkpoint, interrupts, machine, parallel, workdir_lock, xla_options
from mtl_jax.runtime.best import BestTracker
from mtl_jax.runtime.checkpoint import Checkpointer
from mtl_jax.runtime.metrics_log import MetricsLog
from mtl_jax.step import TrainState, make_train_step
from mtl_jax.study import stats

RESULTS_JSON = "results.json"  # Final dev metrics, step, sizes and wall time of a finished run.


def load_data(spec: RunSpec, tokenizer) -> dict[str, list[batching.Encoded]]:
  """{'train': [...], 'dev': [...], 'test': [...]} encoded splits of the run's tasks, in
  task-axis order (test: the tasks that declare a test file)."""
  config = spec.config
  data_dir = config.data_dir or files.default_data_dir()
  limit = config.data_limit or None
  out = {}
  for split in ("train", "dev", "test"):
    out[split] = [
      batching.encode(
        tokenizer,
        files.load_split(data_dir, task, split, config.strict_data, limit),
        config.model.max_length,
        spec.cross_encoded(task.name),
      )
      for task in spec.tasks
      if split in task.files
    ]
  return out


def train_batches(spec: RunSpec, train_data: list[batching.Encoded]) -> schedules.Batches:
  """The batches a run trains on, by step: its schedule (train.schedule, the
  train.epoch_examples caps, length grouping) and its packing over the spec's devices,
  with the slots (`packing.choose_slots`) that compute the fewest tokens on the run's
  first steps. A task whose loss ranks a batch's examples against each other (CoSENT:
  `HeadSpec.batch_ranked_tasks`) keeps one lane, so that its loss is the whole batch's,
  packed or not. What train_and_evaluate draws, and what `mtl_jax.diagnose
  --from_checkpoint` measures on."""
  seqs = spec.config.train.seqs_per_task
  schedule = spec.schedule(
    tuple(len(d) for d in train_data),
    tuple(batching.examples_per_batch(d, seqs) for d in train_data),
  )
  schedules.check_batch_sizes(schedule)  # A batch larger than a task's data: refused.
  buckets = tuple(spec.config.train.length_buckets)
  plan = spec.train_plan
  if plan is not None and not schedule.one_task:
    ranked = spec.model.heads.batch_ranked_tasks
    plan = packing.choose_slots(
      plan,
      [
        d.tokens.mean() * batching.examples_per_batch(d, schedule.seqs_per_task) for d in train_data
      ],
      lambda p: sum(
        schedules.train_batch(train_data, k, schedule, buckets, p)["input_ids"].size
        for k in range(packing.SLOT_SAMPLE_STEPS)
      ),
      [1 if d.task in ranked else packing.MAX_SLOTS for d in train_data],
    )
  return schedules.Batches(train_data, schedule, buckets, plan)


def init_state(spec: RunSpec):
  """(model, train state at step 0, frozen params, optimizer) of a run."""
  model, params = multitask.build(spec.model, jax.random.key(spec.config.seed), spec.bert)
  trainable, frozen = spec.split_params(params)
  tx = spec.optimizer(trainable)
  state = TrainState(jnp.asarray(0, jnp.int32), trainable, tx.init(trainable))
  return model, state, frozen, tx


def restore(workdir: str, devices: int = 1):
  """(spec, model, state, frozen, tx) of the latest checkpoint of a training workdir; the
  spec is built from its config.json, upgraded to today's schema (upgrade.saved_config),
  for `devices` data-parallel devices."""
  spec = run_spec.build(upgrade.saved_config(workdir), devices)
  model, state, frozen, tx = init_state(spec)
  ckpt = Checkpointer(workdir, 1, 1)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
  state, _ = ckpt.restore(state)
  ckpt.close()
  return spec, model, state, frozen, tx


def evaluated_trainable(state: TrainState) -> dict:
  """The trainable params a run is evaluated and predicted with, and the tools load: their
  exponential moving average when the run keeps one (train.ema_decay > 0,
  mtl_jax.optim.averaging), else the params as trained."""
  ema = averaging.averaged_params(state.opt_state)
  return state.trainable if ema is None else ema


def load_trained(workdir: str, devices: int = 1):
  """(spec, model, params) of the latest checkpoint of a training workdir: the params it
  is evaluated with (`evaluated_trainable`: the EMA when the run kept one)."""
  spec, model, state, frozen, _ = restore(workdir, devices)
  return spec, model, multitask.merge(evaluated_trainable(state), frozen)


def _describe_params(params: dict, trainable: dict, opt_state) -> str:
  n_all, n_train = multitask.count(params), multitask.count(trainable)
  opt_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "nbytes"))
  return (
    f"parameters: {n_all:,} total, {n_train:,} trainable ({100 * n_train / n_all:.2f}%); "
    f"optimizer state {opt_bytes / 2**20:.1f} MiB"
  )


def _trained_losses(metrics: dict, names: tuple[str, ...]) -> dict[str, float]:
  """{task: loss} of the tasks (`names`, task-axis order) the logged step trained: all, or
  one with a one-task schedule."""
  if "task" in metrics:
    return {names[int(metrics["task"])]: float(metrics["loss"])}
  return dict(zip(names, np.asarray(metrics["task_loss"]).tolist()))


class Throughput:
  """Examples, sequences and tokens drawn: rates since the last log, tokens over the run."""

  def __init__(self):
    self.tokens = np.zeros(2, np.int64)  # [real, computed] of this process's steps.
    self._reset()

  def _reset(self):
    self.tick, self.examples, self.sequences = time.perf_counter(), 0, 0

  def add(self, batch: dict) -> None:
    self.examples += int(batch["weights"].sum())  # A pair's weight is on its first row only.
    self.sequences += packing.num_sequences(batch)
    self.tokens += int(batch["attention_mask"].sum()), batch["attention_mask"].size

  def rates(self) -> dict[str, float]:
    """Examples and sequences per second since the last call."""
    elapsed = max(time.perf_counter() - self.tick, 1e-9)
    out = {
      "examples_per_sec": self.examples / elapsed,
      "sequences_per_sec": self.sequences / elapsed,
    }
    self._reset()
    return out

  def padding_line(self, first: int, last: int) -> str:
    real, computed = self.tokens
    return (
      f"tokens: {real:,} real of {computed:,} computed in steps {first + 1}-{last} "
      f"({100 * (1 - real / computed):.1f}% padding)"
    )


def _log_step(
  log: MetricsLog, step: int, metrics, throughput: Throughput, progress, names: tuple[str, ...]
) -> None:
  """Writes a logged step's metrics (of the tasks `names`); a non-finite loss stops the run
  (nothing more saved)."""
  metrics = jax.device_get(metrics)
  losses = _trained_losses(metrics, names)
  if not np.isfinite(metrics["loss"]):
    raise FloatingPointError(
      f"non-finite loss at step {step}: per-task losses {losses}; lower train.learning_rate?"
    )
  extra = throughput.rates()
  if "task" in metrics:  # A one-task step: name the task, log its loss under its name.
    ((task, loss),) = losses.items()
    extra.update({"task": task, f"task_loss/{task}": loss})
  log.write(step, metrics, tasks=names, extra=extra)
  progress.set_postfix(
    loss=f"{float(metrics['loss']):.3f}", ex_s=f"{extra['examples_per_sec']:.1f}"
  )


def _save_on_interrupt(ckpt: Checkpointer, state: TrainState) -> None:
  try:
    step = int(state.step)
    if ckpt.latest_step() != step:
      ckpt.save(step, state, {"step": step}, force=True)
    ckpt.close()
    logging.warning(
      "interrupted: saved step %d to %s; rerun the same command to resume", step, ckpt.directory
    )
  except Exception as e:  # The step was cut mid-update: its buffers are gone.
    logging.warning(
      "interrupted mid-step (%s); the next run resumes from step %s", e, ckpt.latest_step()
    )


def _resume_config(spec: RunSpec, workdir: str) -> RunSpec:
  """The spec to train `workdir` with, its config.json (re)written. A workdir with
  checkpoints resumes only with the config they were trained with (resume.check_resume,
  one error naming every changed key); a run written before a key of today's config
  existed resumes as it was trained (resume.adopt_saved: the spec is rebuilt with it)."""
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, upgrade.CONFIG_JSON)
  ckpt = Checkpointer(workdir, 1, 1)
  try:
    if ckpt.latest_step() is not None:
      if os.path.isfile(config_path):
        saved = upgrade.read_run_config(workdir)
        adopted = resume.adopt_saved(saved, spec.config)
        for change in adopted:
          logging.warning(
            "%s was trained before a key of today's config existed: resuming it "
            "as it was trained, with %s",
            workdir,
            change,
          )
        if adopted:
          spec = run_spec.build(spec.config, spec.devices)
        resume.check_resume(saved, spec.config, workdir)
      else:
        logging.warning(
          "%s holds checkpoints but no config.json: cannot check that they "
          "were trained with this config",
          workdir,
        )
  finally:
    ckpt.close()
  checkpoint.write_json_atomic(config_path, json.loads(spec.config.to_json_best_effort()))
  return spec


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint) and returns final dev metrics.

  The config is checked and built once (run_spec.build) before the workdir is touched;
  then the workdir is held by this run alone (runtime.workdir_lock: a second trainer is
  refused at once) until it returns. With train.eval_every > 0 the best dev overall so far
  is kept in best_checkpoint/ and best.json, and train.early_stopping_patience > 0 ends
  training after that many evaluations without improvement (runtime.best)."""
  mesh = parallel.make_mesh()
  spec = run_spec.build(config, mesh.size)
  with workdir_lock.hold(workdir, lock=jax.process_index() == 0):
    return _train(_resume_config(spec, workdir), workdir, mesh)


def _train(spec: RunSpec, workdir: str, mesh) -> dict:
  """train_and_evaluate's body, run while the workdir's lock is held."""
  start = time.perf_counter()
  config, t = spec.config, spec.config.train
  primary = jax.process_index() == 0  # Writes the logs and predictions of a multi-host run.

  # --- Input
  data = load_data(spec, spec.tokenizer())
  buckets = tuple(t.length_buckets)
  batches = train_batches(spec, data["train"])
  logging.info(schedules.describe(batches.schedule))
  if batches.plan is not None and batches.plan.slots:
    slots = ", ".join(f"{task} {m}" for task, m in zip(spec.task_names, batches.plan.slots))
    logging.info("packing: %s lanes per step (slots per task: %s)", sum(batches.plan.slots), slots)

  # --- Model, optimizer and step
  model, state, frozen, tx = init_state(spec)
  logging.info(
    _describe_params(multitask.merge(state.trainable, frozen), state.trainable, state.opt_state)
  )
  state_sharding = parallel.param_shardings(state, mesh, t.param_sharding)
  state = jax.device_put(state, state_sharding)
  frozen = jax.device_put(frozen, parallel.param_shardings(frozen, mesh, t.param_sharding))
  step_fn = jax.jit(
    make_train_step(model, tx, tuple(range(len(spec.tasks))), config.seed, smart=spec.smart),
    donate_argnums=(0,),
    out_shardings=(state_sharding, parallel.replicated(mesh)),
    compiler_options=xla_options.train_step_options(),
  )
  train_sharding = parallel.batch_sharding(mesh, 1)  # [T, S, ...]: split S.
  predict_fn = parallel.data_parallel(make_predict_fn(model), mesh, 0)

  if t.ema_decay:
    logging.info(
      "evaluating and predicting with the moving average of the parameters "
      "(train.ema_decay=%s), not the last step's",
      t.ema_decay,
    )

  def run_eval(params) -> tuple[dict, dict]:
    return evaluate(
      predict_fn,
      params,
      data["dev"],
      config.eval.seqs_per_batch,
      buckets,
      spec.eval_plan,
      spec.tasks,
    )

  # --- Checkpoints
  ckpt = Checkpointer(workdir, t.checkpoint_every, t.keep_checkpoints, cleanup_tmp=True)
  meta = {}
  if ckpt.latest_step() is not None:  # The newest step that restores; damaged ones set aside.
    state, meta = ckpt.restore(state, set_aside=True)
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  best = BestTracker(workdir, t.eval_every, t.early_stopping_patience)

  # --- Loop
  first = int(state.step)
  last = t.steps
  if first < t.steps and best.should_stop(first):
    logging.warning(
      "this run already stopped early at step %d (best dev overall at step %d); "
      "not training further",
      first,
      best.best["step"] if best.best else 0,
    )
    last = first
  log = MetricsLog(workdir, primary, first, meta.get("records", ()))
  ckpt.step_records = log.records_at  # Kept in each checkpoint: re-logged if the file lost them.
  progress = log.progress(first, t.steps)
  throughput = Throughput()
  last_eval = None  # (step, dev metrics, dev predictions) of the latest evaluation.
  with interrupts.stop_between_steps() as stop_request:
    try:
      for step in range(first, last):
        batch = batches(step)
        throughput.add(batch)
        done = step + 1
        logged = done % max(t.log_every, 1) == 0 or done == t.steps
        # The gradient statistics are computed on the logged steps only (a traced flag).
        state, metrics = step_fn(
          state, frozen, parallel.put_batch(batch, train_sharding), np.bool_(logged)
        )
        if logged:
          _log_step(log, done, metrics, throughput, progress, spec.task_names)
        progress.update(1)
        stop = None
        if t.eval_every and done % t.eval_every == 0 and done != t.steps:
          last_eval = (done, *run_eval(multitask.merge(evaluated_trainable(state), frozen)))
          log.write(done, last_eval[1], prefix="dev/")
          stop = best.update(done, state, last_eval[1])
        ckpt.save(done, state, {"step": done})
        if stop:
          logging.warning(stop)
          break
        # Ctrl-C or SIGTERM: this step is done and its state whole. Agreed by every process
        # of a multi-process job, which must stop after the same step.
        if parallel.any_process(bool(stop_request)):
          raise KeyboardInterrupt
    except KeyboardInterrupt:  # The request above, a second signal, or host-side code.
      progress.close()
      _save_on_interrupt(ckpt, state)
      raise
    except FloatingPointError:  # Non-finite: nothing more is saved; finish the last save.
      progress.close()
      ckpt.close()
      raise
  progress.close()
  step = int(state.step)
  if ckpt.latest_step() != step:
    ckpt.save(step, state, {"step": step}, force=True)
  ckpt.close()

  # --- Final evaluation, predictions and results.json
  params = multitask.merge(evaluated_trainable(state), frozen)  # The EMA, if kept.
  if last_eval is not None and last_eval[0] == step:  # Stopped early right after it.
    results, dev_preds = last_eval[1:]
  else:
    results, dev_preds = run_eval(params)
    log.write(step, results, prefix="dev/")
    best.update(step, state, results)
  if config.eval.write_predictions:  # Every process predicts: it is one SPMD program.
    splits = [(d, dev_preds[d.task]) for d in data["dev"]] + [
      (d, predict_split(predict_fn, params, d, config.eval.seqs_per_batch, buckets, spec.eval_plan))
      for d in data["test"]
    ]
    if primary:
      for d, preds in splits:
        write_split_predictions(workdir, d, preds)
  log.close()
  if primary:
    checkpoint.write_json_atomic(
      os.path.join(workdir, RESULTS_JSON),
      {
        "step": step,
        "first_step": first,
        "seconds": time.perf_counter() - start,
        "machine": machine.cpu_summary(),  # The CPU `seconds` was measured on.
        "params": multitask.count(params),
        "trainable_params": multitask.count(state.trainable),
        # What the metrics and predictions were computed with: "ema" (train.ema_decay > 0,
        # the moving average of the parameters) or "trained" (the last step's).
        "evaluated_params": "ema" if t.ema_decay else "trained",
        "devices": mesh.size,
        "real_tokens": int(throughput.tokens[0]),
        "computed_tokens": int(throughput.tokens[1]),
        "metrics": results,
        "bootstrap": stats.dev_intervals(workdir, data["dev"]),
      },
    )
  if throughput.tokens[1]:
    logging.info(throughput.padding_line(first, step))
  logging.info("final dev metrics: %s", json.dumps(results))
  print(log.table(results))
  return results
