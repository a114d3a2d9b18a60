"""Training and evaluation loop: config + workdir in, dev metrics out.

Sections: input, model, optimizer, checkpoint, loop, final evaluation. Everything a run
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

from mtl_jax import tasks
from mtl_jax.config import resume, run_spec, upgrade
from mtl_jax.data import batching, files, packing, schedules
from mtl_jax.evaluate import evaluate, make_predict_fn, predict_split, write_split_predictions
from mtl_jax.models import hf_io, multitask
from mtl_jax.runtime import checkpoint, interrupts, parallel, workdir_lock, xla_options
from mtl_jax.runtime.checkpoint import Checkpointer
from mtl_jax.runtime.metrics_log import MetricsLog
from mtl_jax.step import TrainState, make_train_step
from mtl_jax.study import stats
from mtl_jax.tasks import TASKS

RESULTS_JSON = "results.json"  # Final dev metrics, step, sizes and wall time of a finished run.


def load_data(config: ml_collections.ConfigDict, tokenizer) -> dict[str, list[batching.Encoded]]:
  """{'train': [...], 'dev': [...], 'test': [...]} encoded splits, tasks in TASKS order."""
  data_dir = config.data_dir or files.default_data_dir()
  limit = config.data_limit or None
  cross = run_spec.head_spec(config).pairs == "cross"
  out = {}
  for split in ("train", "dev", "test"):
    out[split] = [
      batching.encode(
        tokenizer,
        files.load_split(data_dir, task, split, config.strict_data, limit),
        config.model.max_length,
        cross,
      )
      for task in TASKS
      if split in tasks.get(task).files
    ]
  return out


def train_batches(
  config: ml_collections.ConfigDict, train_data: list[batching.Encoded], devices: int = 1
) -> schedules.Batches:
  """The batches a run of `config` trains on, by step: its schedule (train.schedule, the
  train.epoch_examples caps, length grouping) and its packing over `devices`, with the
  slots (`packing.choose_slots`) that compute the fewest tokens on the run's first steps.
  What train_and_evaluate draws, and what `mtl_jax.diagnose --from_checkpoint` measures
  on."""
  schedule = run_spec.train_schedule(
    config,
    tuple(len(d) for d in train_data),
    tuple(batching.examples_per_batch(d, config.train.seqs_per_task) for d in train_data),
  )
  buckets = tuple(config.train.length_buckets)
  plan = run_spec.pack_plan(config, devices)
  if plan is not None and not schedule.one_task:
    plan = packing.choose_slots(
      plan,
      [
        d.tokens.mean() * batching.examples_per_batch(d, schedule.seqs_per_task) for d in train_data
      ],
      lambda p: sum(
        schedules.train_batch(train_data, k, schedule, buckets, p)["input_ids"].size
        for k in range(packing.SLOT_SAMPLE_STEPS)
      ),
    )
  return schedules.Batches(train_data, schedule, buckets, plan)


def init_state(config: ml_collections.ConfigDict):
  """(model, train state at step 0, frozen params, optimizer) from a validated config."""
  model, params = multitask.build(run_spec.model_spec(config), jax.random.key(config.seed))
  trainable, frozen = run_spec.split_params(config, params)
  tx = run_spec.optimizer(config, trainable)
  state = TrainState(jnp.asarray(0, jnp.int32), trainable, tx.init(trainable))
  return model, state, frozen, tx


def restore(workdir: str):
  """(config, model, state, frozen, tx) of the latest checkpoint of a training workdir; the
  config is its config.json upgraded to today's schema (upgrade.saved_config)."""
  config = upgrade.saved_config(workdir)
  run_spec.validate(config)
  model, state, frozen, tx = init_state(config)
  ckpt = Checkpointer(workdir, 1, 1)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
  state, _ = ckpt.restore(state)
  ckpt.close()
  return config, model, state, frozen, tx


def load_trained(workdir: str):
  """(config, model, params) of the latest checkpoint of a training workdir."""
  config, model, state, frozen, _ = restore(workdir)
  return config, model, multitask.merge(state.trainable, frozen)


def _describe_params(params: dict, trainable: dict, opt_state) -> str:
  n_all, n_train = multitask.count(params), multitask.count(trainable)
  opt_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "nbytes"))
  return (
    f"parameters: {n_all:,} total, {n_train:,} trainable ({100 * n_train / n_all:.2f}%); "
    f"optimizer state {opt_bytes / 2**20:.1f} MiB"
  )


def _trained_losses(metrics: dict) -> dict[str, float]:
  """{task: loss} of the tasks the logged step trained: all, or one with a one-task schedule."""
  if "task" in metrics:
    return {TASKS[int(metrics["task"])]: float(metrics["loss"])}
  return dict(zip(TASKS, np.asarray(metrics["task_loss"]).tolist()))


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


def _check_and_write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses (resume.check_resume) to resume the workdir's checkpoints with a config that
  changes resume.RESUME_MUST_MATCH keys; only then (re)writes config.json. Nothing is
  loaded yet, so a mismatch fails at once."""
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, upgrade.CONFIG_JSON)
  ckpt = Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints)
  try:
    if ckpt.latest_step() is not None:
      if os.path.isfile(config_path):
        saved = upgrade.read_run_config(workdir)
        for change in resume.adopt_saved(saved, config):
          logging.warning(
            "%s was trained before a key of today's config existed: resuming it "
            "as it was trained, with %s",
            workdir,
            change,
          )
        resume.check_resume(saved, config, workdir)
      else:
        logging.warning(
          "%s holds checkpoints but no config.json: cannot check that they "
          "were trained with this config",
          workdir,
        )
  finally:
    ckpt.close()
  tmp = f"{config_path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, config_path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint) and returns final dev metrics.

  With train.eval_every > 0 the best dev overall so far is kept in best_checkpoint/ and
  best.json (see mtl_jax.runtime.checkpoint), and train.early_stopping_patience > 0 ends training
  after that many evaluations without improvement (then saves, evaluates and writes
  predictions of the last step, as at the normal end).

  The config is validated before the workdir is touched; then the workdir is held by this
  run alone (mtl_jax.runtime.workdir_lock: a second trainer is refused at once) until it returns."""
  run_spec.validate(config)
  with workdir_lock.hold(workdir, lock=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """train_and_evaluate's body, run while the workdir's lock is held."""
  start = time.perf_counter()
  run_spec.validate(config)
  mesh = parallel.make_mesh()
  run_spec.check_devices(config, mesh.size)
  _check_and_write_config(config, workdir)
  primary = jax.process_index() == 0  # Writes the logs and predictions of a multi-host run.

  # --- Input
  tokenizer = hf_io.load_tokenizer(config.model.path)
  data = load_data(config, tokenizer)
  buckets = tuple(config.train.length_buckets)
  eval_plan = run_spec.pack_plan(config, mesh.size, for_eval=True)
  batches = train_batches(config, data["train"], mesh.size)
  logging.info(schedules.describe(batches.schedule))
  if batches.plan is not None and batches.plan.slots:
    logging.info(
      "packing: %s lanes per step (slots per task: %s)",
      sum(batches.plan.slots),
      ", ".join(f"{t} {m}" for t, m in zip(TASKS, batches.plan.slots)),
    )

  # --- Model, optimizer and step
  model, state, frozen, tx = init_state(config)
  logging.info(
    _describe_params(multitask.merge(state.trainable, frozen), state.trainable, state.opt_state)
  )
  param_sharding = config.train.param_sharding
  state_sharding = parallel.param_shardings(state, mesh, param_sharding)
  state = jax.device_put(state, state_sharding)
  frozen = jax.device_put(frozen, parallel.param_shardings(frozen, mesh, param_sharding))
  step_fn = jax.jit(
    make_train_step(model, tx, tuple(range(len(TASKS))), config.seed),
    donate_argnums=(0,),
    out_shardings=(state_sharding, parallel.replicated(mesh)),
    compiler_options=xla_options.train_step_options(),
  )
  train_sharding = parallel.batch_sharding(mesh, 1)  # [T, S, ...]: split S.
  predict_fn = parallel.data_parallel(make_predict_fn(model), mesh, 0)

  def run_eval() -> tuple[dict, dict]:
    return evaluate(
      predict_fn,
      multitask.merge(state.trainable, frozen),
      data["dev"],
      config.eval.seqs_per_batch,
      buckets,
      eval_plan,
    )

  # --- Checkpoint
  ckpt = Checkpointer(
    workdir, config.train.checkpoint_every, config.train.keep_checkpoints, cleanup_tmp=True
  )
  meta = {}
  if ckpt.latest_step() is not None:  # The newest step that restores; damaged ones set aside.
    state, meta = ckpt.restore(state, set_aside=True)
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))

  # --- Best dev checkpoint and early stopping
  t = config.train
  patience = t.early_stopping_patience
  best = checkpoint.read_best(workdir) if t.eval_every else None

  def evals_without_improvement(step: int) -> int:
    """Evaluations in (best step, step]: derived, not counted, so exact across resumes."""
    return step // t.eval_every - (best["step"] // t.eval_every if best else 0)

  def track_best(step: int, results: dict) -> str | None:
    """Keeps the best checkpoint; returns why training should stop early, if it should."""
    nonlocal best
    score = float(results["overall"])
    if np.isfinite(score) and (best is None or score > best["overall"]):
      best = checkpoint.save_best(workdir, step, state, results)
      logging.info("new best dev overall %.4f at step %d", score, step)
    elif patience and evals_without_improvement(step) >= patience:
      return (
        f"early stopping at step {step}: dev overall has not improved on "
        f"{best['overall'] if best else float('nan'):.4f} (step {best['step'] if best else '-'}) "
        f"for {evals_without_improvement(step)} evaluations "
        f"(train.early_stopping_patience={patience})"
      )
    return None

  # --- Loop
  log = MetricsLog(workdir, primary, int(state.step), meta.get("records", ()))
  ckpt.step_records = log.records_at  # Kept in each checkpoint: re-logged if the file lost them.
  first = int(state.step)
  last = t.steps
  if patience and first < t.steps and evals_without_improvement(first) >= patience:
    logging.warning(
      "this run already stopped early at step %d (best dev overall at step %d); "
      "not training further",
      first,
      best["step"] if best else 0,
    )
    last = first
  last_eval = None  # (step, results, dev predictions) of the latest evaluation.
  progress = log.progress(first, t.steps)
  tick, examples, sequences = time.perf_counter(), 0, 0  # Since the last log.
  tokens = np.zeros(2, np.int64)  # [real, computed] this process's steps, whole run.
  with interrupts.stop_between_steps() as stop_request:
    try:
      for step in range(first, last):
        batch = batches(step)
        examples += int(batch["weights"].sum())  # A pair's weight is on its first row only.
        sequences += packing.num_sequences(batch)
        tokens += int(batch["attention_mask"].sum()), batch["attention_mask"].size
        batch = parallel.put_batch(batch, train_sharding)
        state, metrics = step_fn(state, frozen, batch)
        done = step + 1
        if done % max(t.log_every, 1) == 0 or done == t.steps:
          metrics = jax.device_get(metrics)
          losses = _trained_losses(metrics)
          if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(
              f"non-finite loss at step {done}: per-task losses "
              f"{losses}; lower train.learning_rate?"
            )
          elapsed = max(time.perf_counter() - tick, 1e-9)
          rate = examples / elapsed
          extra = {"examples_per_sec": rate, "sequences_per_sec": sequences / elapsed}
          if "task" in metrics:  # A one-task step: name the task, log its loss under its name.
            ((task, loss),) = losses.items()
            extra.update({"task": task, f"task_loss/{task}": loss})
          tick, examples, sequences = time.perf_counter(), 0, 0
          log.write(done, metrics, tasks=TASKS, extra=extra)
          progress.set_postfix(loss=f"{float(metrics['loss']):.3f}", ex_s=f"{rate:.1f}")
        progress.update(1)
        stop = None
        if t.eval_every and done % t.eval_every == 0 and done != t.steps:
          last_eval = (done, *run_eval())
          log.write(done, last_eval[1], prefix="dev/")
          stop = track_best(done, last_eval[1])
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
  if ckpt.latest_step() != int(state.step):
    ckpt.save(int(state.step), state, {"step": int(state.step)}, force=True)
  ckpt.close()

  # --- Final evaluation and predictions
  if last_eval is not None and last_eval[0] == int(state.step):  # Stopped early right after it.
    results, dev_preds = last_eval[1:]
  else:
    results, dev_preds = run_eval()
    log.write(int(state.step), results, prefix="dev/")
    if t.eval_every:
      track_best(int(state.step), results)
  params = multitask.merge(state.trainable, frozen)
  if config.eval.write_predictions:  # Every process predicts: it is one SPMD program.
    splits = [(d, dev_preds[d.task]) for d in data["dev"]] + [
      (d, predict_split(predict_fn, params, d, config.eval.seqs_per_batch, buckets, eval_plan))
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
        "step": int(state.step),
        "first_step": first,
        "seconds": time.perf_counter() - start,
        "params": multitask.count(params),
        "trainable_params": multitask.count(state.trainable),
        "devices": mesh.size,
        "real_tokens": int(tokens[0]),
        "computed_tokens": int(tokens[1]),
        "metrics": results,
        "bootstrap": stats.dev_intervals(workdir, data["dev"]),
      },
    )
  if tokens[1]:
    logging.info(
      "tokens: %s real of %s computed in steps %d-%d (%.1f%% padding)",
      f"{tokens[0]:,}",
      f"{tokens[1]:,}",
      first + 1,
      int(state.step),
      100 * (1 - tokens[0] / tokens[1]),
    )
  logging.info("final dev metrics: %s", json.dumps(results))
  print(log.table(results))
  return results
