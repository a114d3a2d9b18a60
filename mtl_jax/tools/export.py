"""Export a run's fine-tuned encoder as a plain Hugging Face BERT directory, from the command line.

  python -m mtl_jax.export --workdir=WORKDIR --output=DIR [--overwrite] [--task=<one of the run's tasks>]

DIR receives:
  config.json, model.safetensors  the encoder with every adapter (LoRA/rsLoRA/DoRA) merged
                                  into plain dense weights, in Hugging Face names and [out, in]
                                  layouts: `transformers.BertModel.from_pretrained(DIR)` or
                                  `mtl_jax.models.hf_io.load_bert(DIR)` reads it. The pooler
                                  (which mtl_jax never trains) is copied from the pretrained model.
  vocab.txt, tokenizer.json, ...  the tokenizer files of the run's model directory (whichever exist).
  heads.safetensors               the task heads, flat Flax names (`sst/kernel`, `quora/bias`) and
                                  Flax layouts (kernel [in, out]: y = x @ kernel + bias).
  mtl_jax.json                    pooling, the heads and their inputs, how each pair task's
                                  pairs are encoded (bi or cross), the source run and step,
                                  and the run's whole config for reference.

The parameters exported are those the run was evaluated with: the moving average of its
parameters when it kept one (train.ema_decay > 0; mtl_jax.json's source.params says "ema").

The directory is written as DIR.tmp-XXXX beside DIR and renamed when complete, so DIR is
either absent, the previous export, or a finished one. An existing non-empty DIR is refused
unless --overwrite, and even then only an earlier export (holding mtl_jax.json) is replaced,
never a directory holding the run or its model. The latest checkpoint of WORKDIR that
restores is exported (see `train.restore`: a damaged newer step is skipped with a warning),
and its step is the one reported and recorded.

A run with task-specific copies of shared layers (adapter.task_specific) has one encoder
per task, and a BertModel holds one: --task (required then, refused otherwise) exports the
encoder that task runs with (its copies in place of the shared groups), recorded as "task"
in mtl_jax.json; export each task to its own DIR. A run with task layers
(adapter.task_layers) is refused: BertModel has no place for them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile

import jax
import numpy as np
from absl import app, flags, logging
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file

from mtl_jax.config import upgrade
from mtl_jax.models import adapters, hf_io, task_specific
from mtl_jax.models import heads as heads_lib
from mtl_jax.tools import cli

TOKENIZER_FILES = (
  "vocab.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
)
FORMAT_VERSION = 1

FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory (config.json + checkpoints/).", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Directory to write the Hugging Face export to.", flag_values=FLAGS
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace an earlier export in the output directory.", flag_values=FLAGS
)
_TASK = flags.DEFINE_string(
  "task",
  None,
  "For a run with task-specific copies (adapter.task_specific): the task whose encoder to export.",
  flag_values=FLAGS,
)
cli.mark_required(FLAGS, ["workdir", "output"])

# What each baseline head computes from the pooled sentence vectors (mtl_jax.models.heads);
# other head settings are described by the run's `heads` config, recorded beside.
HEAD_INFO = {
  "sst": {
    "input": "pooled sentence vector u [H]",
    "output": "5 SST-5 class logits",
    "formula": "u @ kernel + bias",
  },
  "quora": {
    "input": "two pooled vectors u, v: concat [u, v, |u - v|, u * v] [4H]",
    "output": "1 paraphrase logit (sigmoid -> probability)",
    "formula": "concat(u, v, abs(u - v), u * v) @ kernel + bias",
  },
  "sts": {
    "input": "two pooled vectors u, v",
    "output": "similarity on the 0..5 scale",
    "formula": "5 * cosine(u, v)",
  },  # No parameters.
}


class ExportError(Exception):
  """A workdir or output directory that cannot be exported from/to, with what to do."""


def export(workdir: str, output: str, overwrite: bool = False, task: str | None = None) -> dict:
  """Writes the export of `workdir`'s latest checkpoint to `output` (task `task`'s encoder,
  for a run with task-specific copies); returns mtl_jax.json's dict."""
  _check_workdir(workdir, task)
  cli.check_output(output, directory=True)
  output = os.path.abspath(output)
  _check_output(output, overwrite, (workdir,))  # Fail before the slow part, again at the end.

  from mtl_jax import train
  from mtl_jax.models import multitask

  try:
    # The newest step that restores: an older one when the latest is damaged (it warns).
    spec, model, state, frozen, _ = train.restore(workdir)
    config = spec.config
  except FileNotFoundError as e:
    raise ExportError(str(e)) from e
  except ValueError as e:
    if "do not match" not in str(e):  # Orbax: the saved tree differs from the one built.
      raise
    raise ExportError(
      f"the checkpoint in {workdir} does not match the train state this version of mtl_jax "
      f"builds from its config.json (saved by another version?): {str(e).splitlines()[0]}"
    ) from e
  step = int(state.step)  # The step restored, not the latest on disk.
  params = multitask.merge(train.evaluated_trainable(state), frozen)  # The EMA, if kept.
  names = spec.task_names
  if task is not None and task not in names:
    raise ExportError(f"--task={task!r} is not a task of {workdir}; one of {list(names)}")
  params = task_specific.task_params(params, None if task is None else names.index(task))

  lora = model.config.lora
  encoder = jax.device_get(adapters.merge_all(params["encoder"], lora))
  heads = {
    k: np.asarray(v, np.float32)
    for k, v in traverse_util.flatten_dict(jax.device_get(params["heads"]), sep="/").items()
  }
  model_dir = hf_io.local_dir(config.model.path)  # A Hub id's cached snapshot.
  _check_output(output, overwrite, (workdir, model_dir))
  run_config = upgrade.read_run_config(workdir)

  pooler = _pretrained_pooler(model_dir)  # Read before writing: its errors are not ours.
  parent = os.path.dirname(output)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(output) + ".tmp-", dir=parent)
  except OSError as e:
    raise ExportError(f"cannot write --output={output}: {_write_error(e)}") from e
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700.

    hf_io.save_bert(tmp, model.config, encoder)
    if pooler:
      st = os.path.join(tmp, "model.safetensors")
      hf_io.save_safetensors({**load_file(st), **pooler}, st, {"format": "pt"})

    copied = []
    for name in TOKENIZER_FILES:
      src = os.path.join(model_dir, name)
      if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(tmp, name))
        copied.append(name)
    if not copied:
      print(
        f"warning: {model_dir} has none of {TOKENIZER_FILES}; the export has no tokenizer",
        file=sys.stderr,
      )

    hf_io.save_safetensors(
      heads,
      os.path.join(tmp, "heads.safetensors"),
      {"layout": "flax: kernel [in, out], y = x @ kernel + bias"},
    )
    head_spec = spec.model.heads
    baseline_heads = head_spec == heads_lib.HeadSpec()
    info = {
      "format": "mtl_jax-export",
      "version": FORMAT_VERSION,
      "source": {
        "workdir": os.path.abspath(workdir),
        "step": step,
        "model_path": config.model.path,
        # "ema": the run's moving average of its parameters (train.ema_decay > 0), as it
        # was evaluated; "trained": the step's own parameters.
        "params": "ema" if config.train.ema_decay else "trained",
      },
      "task": task,  # Whose task-specific copies the encoder holds (None: the run has none).
      "encoder": {
        "files": ["config.json", "model.safetensors"],
        "adapter": config.adapter.kind,
        "merged": lora is not None,
        "lora": None
        if lora is None
        else {
          "kind": lora.kind,
          "rank": lora.rank,
          "alpha": lora.alpha,
          "targets": list(lora.targets),
          "layers": None if lora.layers is None else list(lora.layers),
        },
        "pooler": "pretrained (not trained by mtl_jax)" if pooler else None,
      },
      "tokenizer_files": copied,
      "pooling": model.pooling,
      "max_length": config.model.max_length,
      "heads_config": {
        f.name: getattr(head_spec, f.name)
        for f in dataclasses.fields(head_spec)
        if f.name != "tasks"
      },
      # The run's tasks in task-axis order, as trained (heads and losses resolved).
      "tasks": [dataclasses.asdict(t) for t in head_spec.tasks],
      # Per pair task: "bi" (each sentence pooled alone, the heads compare u and v) or
      # "cross" (one [CLS] s1 [SEP] s2 [SEP] sequence, token types 0 then 1, pooled).
      "pairs": {
        t.name: "cross" if head_spec.cross(t.name) else "bi" for t in head_spec.tasks if t.is_pair
      },
      "heads": {
        name: {
          **(HEAD_INFO.get(name, {}) if baseline_heads else {}),
          "params": {k: list(v.shape) for k, v in heads.items() if k.split("/", 1)[0] == name},
        }
        for name in sorted(
          {k.split("/", 1)[0] for k in heads} | (set(HEAD_INFO) if baseline_heads else set())
        )
      },
      "heads_file": "heads.safetensors",
      "heads_layout": "flax: kernel [in, out], y = x @ kernel + bias",
      "config": run_config,
    }
    with open(os.path.join(tmp, "mtl_jax.json"), "w") as f:
      json.dump(info, f, indent=2)
    _publish(tmp, output, overwrite, (workdir, model_dir))
  except (OSError, SafetensorError) as e:  # A full disk, a quota, a vanished directory.
    shutil.rmtree(tmp, ignore_errors=True)
    raise ExportError(
      f"writing the export to {output} failed: {_write_error(e)}; {output} is as it was "
      f"(the partial {os.path.basename(tmp)} was removed): free some space or choose "
      "another --output"
    ) from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return info


def _write_error(e: Exception) -> str:
  """The reason of a failed write in a few words: strerror, or the OS message safetensors
  wraps ('Error while serializing: IoError(Os { code: 28, ..., message: "No space ..." })')."""
  if isinstance(e, OSError):
    return e.strerror or str(e)
  found = re.search(r'message: "([^"]*)"', str(e))
  return found.group(1) if found else " ".join(str(e).split())[:200]


def _check_workdir(workdir: str, task: str | None = None) -> None:
  """Clear errors for the usual mistakes, without creating anything (Checkpointer would)."""
  if not os.path.isdir(workdir):
    raise ExportError(f"training workdir {workdir!r} does not exist")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise ExportError(
      f"{workdir} has no config.json: is it a training workdir (the --workdir of main.py)?"
    )
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ExportError(
      f"{workdir} has no checkpoints/ directory: the run has not saved a checkpoint yet"
    )
  saved = upgrade.saved_config(workdir)
  kind = saved.adapter.task_layers
  copies = bool(saved.adapter.task_specific) or saved.adapter.task_specific_top > 0
  if copies and task is None:
    raise ExportError(
      f"{workdir} was trained with task-specific copies of shared layers "
      "(adapter.task_specific, adapter.task_specific_top): its encoder differs per task and a "
      f"Hugging Face BertModel holds one: export one task's with --task (one of "
      f"{list(saved.task_order)})"
    )
  if task is not None and not copies:
    raise ExportError(
      f"--task={task}: {workdir} has no task-specific copies (adapter.task_specific): its "
      "encoder is the same for every task; export it without --task"
    )
  if kind != "none":
    raise ExportError(
      f"{workdir} was trained with task-specific {kind} layers "
      "(adapter.task_layers): its encoder differs per task and a Hugging Face "
      "BertModel has no place for them; use mtl_jax.embed --workdir --task"
    )


def _check_output(output: str, overwrite: bool, protected: tuple[str, ...] = ()) -> None:
  """Refuses outputs that are not directories, or non-empty ones without --overwrite.

  --overwrite still only replaces a previous export (a directory holding mtl_jax.json),
  never one holding the run or its model, so a slip cannot delete a run or a home directory.
  """
  if os.path.islink(output):
    raise ExportError(f"output {output} is a symlink; give the real directory")
  real = os.path.realpath(output)
  for path in protected:
    inside = os.path.realpath(path)
    if os.path.commonpath([real, inside]) == real:
      raise ExportError(f"output {output} is or contains {path}; choose another directory")
  if os.path.exists(output):
    if not os.path.isdir(output):
      raise ExportError(f"output {output} exists and is not a directory")
    if os.listdir(output):
      if not overwrite:
        raise ExportError(
          f"output {output} exists and is not empty; pass --overwrite to replace it"
        )
      if not os.path.isfile(os.path.join(output, "mtl_jax.json")):
        raise ExportError(
          f"output {output} is not empty and is not an earlier export (no "
          "mtl_jax.json): --overwrite only replaces exports; remove it yourself"
        )


def _publish(tmp: str, output: str, overwrite: bool, protected: tuple[str, ...]) -> None:
  """Renames the finished `tmp` to `output`, moving a previous export aside first."""
  _check_output(output, overwrite, protected)
  if os.path.isdir(output) and os.listdir(output):
    old = f"{output}.old-{tmp.rsplit('.tmp-', 1)[1]}"
    os.rename(output, old)
    try:
      os.rename(tmp, output)
    except BaseException:
      os.rename(old, output)
      raise
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, output)  # Replaces an empty directory.


def _pretrained_pooler(model_dir: str) -> dict[str, np.ndarray]:
  """The pretrained pooler.dense.{weight, bias}, HF names, or {} if the model has none."""
  names = ("pooler.dense.weight", "pooler.dense.bias")
  tensors = hf_io.read_weights(model_dir, keep=lambda n: hf_io.strip_prefix(n) in names)[0]
  out = {
    hf_io.strip_prefix(n): np.ascontiguousarray(t, dtype=np.float32) for n, t in tensors.items()
  }
  return out if len(out) == 2 else {}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax's INFO chatter; --verbosity=0 shows it.
  from mtl_jax.config import ConfigError
  from mtl_jax.runtime.checkpoint import UnreadableCheckpointError

  try:
    info = export(_WORKDIR.value, _OUTPUT.value, _OVERWRITE.value, _TASK.value)
  except (
    ExportError,
    cli.OutputError,
    hf_io.CheckpointError,
    ConfigError,
    UnreadableCheckpointError,
  ) as e:
    sys.exit(f"error: {e}")
  lora = info["encoder"]["lora"]
  what = f"{lora['kind']} merged" if lora else info["encoder"]["adapter"]
  heads = ", ".join(h for h, v in info["heads"].items() if v["params"])
  whose = f"task {info['task']}'s " if info["task"] else ""
  print(
    f"wrote {os.path.abspath(_OUTPUT.value)}: {whose}encoder of step {info['source']['step']} "
    f"({what}), heads {heads}, tokenizer {', '.join(info['tokenizer_files']) or 'none'}"
  )


if __name__ == "__main__":
  cli.run(main, FLAGS)
