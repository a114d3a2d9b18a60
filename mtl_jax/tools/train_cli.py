"""The training command line: `python main.py --config=configs/pcgrad.py --workdir=runs/x`
(or `mtl-jax train ...` where mtl_jax is pip-installed).

Override any config key on the command line, e.g. `--config.train.steps=50`. An unknown
key is refused at once (the config is locked). Training is data-parallel over every local
device; launched as several processes (SLURM `srun`, `mpirun`, a multi-host TPU, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), the same command trains
over all of their devices (mtl_jax.runtime.parallel).
"""

import functools
import os
import signal
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

# Only what loading the config needs: jax, flax and orbax (seconds of CPU to import) come
# with the trainer in main(), once the config has loaded, so that a typo in a config file
# or a --config flag is answered at once.
from mtl_jax.config import ConfigError
from mtl_jax.config.loader import (
  config_file_problem,
  loaded_config,
  take_grad_kwargs,
  unknown_key_message,
)
from mtl_jax.data.files import DataError
from mtl_jax.runtime import console, hugepages, workdir_lock
from mtl_jax.runtime.workdir_lock import WorkdirError

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and predictions."
)
_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/default.py", "Training configuration (a configs/*.py file).", lock_config=True
)
flags.mark_flags_as_required(["workdir"])


def main(argv, grad_kwargs: dict):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    value = _CONFIG.value
  except flags.IllegalFlagValueError:  # get_config() returned None.
    value = None
  try:
    config = loaded_config(value, _config_arg(sys.argv), grad_kwargs)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  from mtl_jax import train
  from mtl_jax.models.hf_io import CheckpointError
  from mtl_jax.runtime import compile_cache, parallel
  from mtl_jax.runtime.checkpoint import CheckpointWriteError, UnreadableCheckpointError

  logging.set_verbosity(logging.INFO)
  console.quiet_libraries()  # Orbax's per-save lines, jax's platform probe.
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  parallel.initialize_distributed()  # Before anything touches a device.
  compile_cache.enable()  # A second identical run loads its compiled steps from disk.
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except (
    ConfigError,
    DataError,
    CheckpointError,
    UnreadableCheckpointError,
    WorkdirError,
    FloatingPointError,
  ) as e:
    # Problems with the user's input get one clear line, not a traceback.
    _exit_with_error(str(e))
  except KeyboardInterrupt:
    sys.exit(130)  # The trainer has saved a checkpoint and said where.
  except OSError as e:  # A full or read-only disk, wherever the run was writing.
    code = workdir_lock.disk_errno(e)
    if code is None:
      raise
    if isinstance(e, CheckpointWriteError):
      _exit_with_error(str(e))
    _exit_with_error(workdir_lock.disk_error_message(code, e.filename or _WORKDIR.value))


def _exit_with_error(message: str) -> None:
  """Exits with `error: message` on a line of its own: the progress bar, which the error
  cut short mid-line, is closed first."""
  from tqdm import tqdm

  for bar in list(tqdm._instances):  # pylint: disable=protected-access
    bar.close()
  sys.exit(f"error: {message}")


def _raise_keyboard_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _config_arg(argv: list[str]) -> str:
  """The --config file named on the command line (the flag's default when absent)."""
  path = "configs/default.py"
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(("--config=", "-config=")):
      path = arg.split("=", 1)[1]
    elif arg in ("--config", "-config") and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _config_line(path: str, error: BaseException) -> str:
  """', line N' of the config file's innermost frame in `error`'s traceback ('' if none)."""
  target = os.path.abspath(path.split(":", 1)[0] if not os.path.isfile(path) else path)
  lines = [
    f.lineno
    for f in traceback.extract_tb(error.__traceback__)
    if os.path.abspath(f.filename) == target
  ]
  return f", line {lines[-1]}" if lines else ""


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag value (`--config.train.steps=abc`) or a missing
  --workdir as one `error:` line instead of absl's FATAL message."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A ConfigError raised by the config file's get_config (e.g. a task declared twice,
    # defaults.add_task): its own line, not the traceback absl's message holds (the
    # innermost one: ml_collections re-raises it with the traceback as its message).
    cause, innermost = e.__cause__ or e.__context__, None
    while cause is not None:
      innermost = cause if isinstance(cause, ConfigError) else innermost
      cause = cause.__cause__ or cause.__context__
    sys.exit(f"error: {innermost if innermost is not None else e}")


def run() -> None:
  """app.run, with a config file that is missing, does not compile or fails in get_config,
  and ml_collections' error for an unknown --config key, each turned into one line."""
  hugepages.reexec_with_huge_pages()  # Before anything allocates (runtime/hugepages.py).
  config_path = _config_arg(sys.argv)
  problem = config_file_problem(config_path)
  if problem:
    sys.exit(f"error: {problem}")
  # The method's arguments, added after parsing (config_flags reads sys.argv itself).
  sys.argv[:], grad_kwargs = take_grad_kwargs(sys.argv)
  try:
    app.run(functools.partial(main, grad_kwargs=grad_kwargs), flags_parser=_parse_flags)
  except (AttributeError, KeyError) as e:
    if flags.FLAGS.is_parsed():  # Raised by the run itself: a real bug, keep the traceback.
      raise
    sys.exit(f"error: unknown config key in the command line: {unknown_key_message(e)}")
  except Exception as e:  # pylint: disable=broad-except
    if flags.FLAGS.is_parsed():
      raise
    message = " ".join(str(e).split())[:300]
    sys.exit(
      f"error: loading config file {config_path}{_config_line(config_path, e)} failed: "
      f"{type(e).__name__}: {message}"
    )


if __name__ == "__main__":
  run()
