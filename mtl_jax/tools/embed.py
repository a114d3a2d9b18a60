"""Embed sentences with the pretrained or a fine-tuned encoder, from the command line.

  python -m mtl_jax.embed --model=DIR --input=FILE.txt --output=OUT.npz [--max_length=N]
  python -m mtl_jax.embed --workdir=WORKDIR --input=FILE.txt --output=OUT.npz \\
      [--pooling=mean] [--task=<one of the run's tasks>]

One sentence per line, or in a pair file, two tab-separated sentences per line, encoded as
[CLS] a [SEP] b [SEP] with token types. Row i of every output array is line i of the input:
a blank line (or one of spaces only) in a sentence file is embedded as an empty sentence
([CLS] [SEP]), never dropped; a pair file has no place for one and is refused, naming the
blank lines. --max_length defaults to the run's model.max_length with --workdir, else to 128
or the model's max_position_embeddings if fewer; above max_position_embeddings it is refused,
naming both.
Writes input_ids, attention_mask, token_type_ids [N, L] (right-padded to the longest line),
last_hidden_state [N, L, H] float32 and pooled [N, H]. With --workdir (a training run) the
fine-tuned encoder of its latest checkpoint is used (adapters applied) and its configured
pooling; --model then defaults to the run's model. A run trained with task layers
(adapter.task_layers = pals | low_rank) or task-specific copies of shared layers
(adapter.task_specific, adapter.task_specific_top) has one encoder per task: --task picks it.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import app, flags

from mtl_jax.config import run_spec, upgrade
from mtl_jax.models import hf_io, task_specific
from mtl_jax.models.heads import POOLINGS
from mtl_jax.models.multitask import MultitaskModel
from mtl_jax.tools import cli

FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Hugging Face BERT directory or Hub id (default with --workdir: the run's).",
  flag_values=FLAGS,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory: use its fine-tuned encoder.", flag_values=FLAGS
)
_INPUT = flags.DEFINE_string(
  "input", None, "Text file: one sentence (or tab-separated pair) a line.", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string("output", None, "Output .npz path.", flag_values=FLAGS)
_MAX_LENGTH = flags.DEFINE_integer(
  "max_length",
  None,
  "Truncate to this many tokens (default: the run's model.max_length, else at most 128).",
  flag_values=FLAGS,
)
_POOLING = flags.DEFINE_enum(
  "pooling", None, POOLINGS, "Pooling (default: mean, or the run's).", flag_values=FLAGS
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 64, "Sequences per forward pass.", flag_values=FLAGS
)
_TASK = flags.DEFINE_string(
  "task", None, "Whose task layers to use (runs trained with them).", flag_values=FLAGS
)
cli.mark_required(FLAGS, ["input", "output"])


def read_lines(path: str) -> tuple[list[str], list[str] | None]:
  """Sentences (and second sentences, if every line is a tab-separated pair), one per line.

  Row i is line i, so that the output can be matched to the input by position: a blank
  line of a sentence file is the empty sentence (dropping it would shift every later row
  silently); in a pair file it is refused with its line number."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"input file {path} not found")
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = [line.rstrip("\r\n") for line in f]
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid UTF-8: {e}") from None
  if not any(line.strip() for line in lines):
    raise ValueError(f"{path}: no sentences (empty file)")
  parts = [line.split("\t") for line in lines]
  bad = [i + 1 for i, p in enumerate(parts) if len(p) > 2]
  if bad:
    raise ValueError(f"{path}: lines {bad[:10]} have more than one tab")
  if any(len(p) == 2 for p in parts):  # A pair file: every line must be a pair.
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
      raise ValueError(
        f"{path}: lines {blank[:10]} are blank in a file of tab-separated "
        "pairs: give a pair on every line (row i of the output is line i)"
      )
    single = [i + 1 for i, p in enumerate(parts) if len(p) == 1]
    if single:
      raise ValueError(
        f"{path}: lines {single[:10]} have no tab, but others are tab-separated pairs"
      )
    return [p[0] for p in parts], [p[1] for p in parts]
  return [p[0] for p in parts], None


def embed(
  model: MultitaskModel,
  params: dict,
  tokenizer,
  first: list[str],
  second: list[str] | None,
  max_length: int,
  batch_size: int = 64,
  task: str | None = None,
) -> dict[str, np.ndarray]:
  """Encodes the sentences (or pairs) and returns the arrays written to the .npz.

  `task` selects the task layers or task-specific copies of an encoder that has them
  (and is required then)."""
  names = list(model.head_spec.names)  # The run's tasks, in task-axis order.
  if model.config.task_layers is not None and task is None:
    raise ValueError(
      f"this run has task-specific {model.config.task_layers.kind} layers "
      f"(adapter.task_layers): give the task whose encoder to use, one of {names}"
    )
  if task_specific.KEY in params and task is None:
    raise ValueError(
      "this run has task-specific copies of shared layers (adapter.task_specific): "
      f"give the task whose encoder to use, one of {names}"
    )
  if second is not None and model.config.type_vocab_size < 2:
    raise ValueError(
      "sentence pairs are encoded with token type 1 for the second sentence, but the model "
      f"has type_vocab_size={model.config.type_vocab_size}: embed one sentence a line"
    )
  if task is not None and task not in names:
    raise ValueError(f"--task={task!r} is not a task of this run; one of {names}")
  task_id = None if task is None else names.index(task)
  enc = tokenizer(
    first, second, truncation=True, max_length=max_length, padding="longest", return_tensors="np"
  )
  arrays = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  n = len(first)
  padded = -(-n // batch_size) * batch_size  # One static shape: pad the row count.
  run = jax.jit(
    lambda p, a, m, t: model.apply(
      {"params": task_specific.task_params(p, task_id)}, a, m, t, task=task_id, method=model.embed
    )
  )
  hidden, pooled = [], []
  for start in range(0, padded, batch_size):
    chunk = {k: _pad_rows(v[start : start + batch_size], batch_size) for k, v in arrays.items()}
    h, p = run(params, chunk["input_ids"], chunk["attention_mask"], chunk["token_type_ids"])
    hidden.append(np.asarray(h))
    pooled.append(np.asarray(p))
  arrays["last_hidden_state"] = np.concatenate(hidden)[:n].astype(np.float32)
  arrays["pooled"] = np.concatenate(pooled)[:n].astype(np.float32)
  return arrays


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> str:
  """np.savez(path, **arrays) (".npz" appended when missing, as np.savez does) through a
  temporary file renamed into place: a failed write, as on a full disk, leaves no partial
  file and an earlier one intact. Returns the path written."""
  path = path if path.endswith(".npz") else path + ".npz"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.pad(x, [(0, rows - len(x))] + [(0, 0)] * (x.ndim - 1))


def load_encoder(model_dir: str | None, workdir: str | None, pooling: str | None):
  """(model, params, tokenizer) of the pretrained encoder, or of a run's fine-tuned one (its
  latest checkpoint) when `workdir` is given."""
  if workdir:
    from mtl_jax import train

    spec, model, params = train.load_trained(workdir)
    model_dir = model_dir or spec.config.model.path
    if pooling and pooling != model.pooling:
      model = model.clone(pooling=pooling)
  elif model_dir:
    config, encoder = hf_io.load_bert(model_dir)
    model, params = MultitaskModel(config, pooling or "mean"), {"encoder": encoder}
  else:
    raise app.UsageError("give --model=DIR, --workdir=WORKDIR, or both")
  return model, params, hf_io.load_tokenizer(model_dir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    cli.check_output(_OUTPUT.value)  # Before the slow restore.
    model, params, tokenizer = load_encoder(_MODEL.value, _WORKDIR.value, _POOLING.value)
    max_length = _MAX_LENGTH.value
    if max_length is None:
      positions = model.config.max_position_embeddings
      run = upgrade.read_run_config(_WORKDIR.value) if _WORKDIR.value else {}
      max_length = run.get("model", {}).get("max_length") or min(128, positions)
    run_spec.check_max_length(
      max_length,
      model.config.max_position_embeddings,
      "--max_length",
      _MODEL.value or _WORKDIR.value,
    )
    first, second = read_lines(_INPUT.value)
    arrays = embed(
      model, params, tokenizer, first, second, max_length, _BATCH_SIZE.value, _TASK.value
    )
  except (FileNotFoundError, ValueError) as e:  # Incl. CheckpointError, ConfigError, OutputError.
    sys.exit(f"error: {e}")
  try:
    write_npz(_OUTPUT.value, arrays)
  except OSError as e:  # A full disk, a quota.
    sys.exit(
      f"error: cannot write --output={_OUTPUT.value}: {e.strerror or e}; nothing was written "
      "(an earlier file there is as it was): free some space or choose another --output"
    )
  print(
    f"wrote {_OUTPUT.value}: {len(first)} {'pairs' if second else 'sentences'}, "
    f"last_hidden_state {arrays['last_hidden_state'].shape}"
  )


if __name__ == "__main__":
  cli.run(main, FLAGS)
