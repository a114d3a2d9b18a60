"""Multi-task fine-tuning of BERT: `python main.py --config=configs/pcgrad.py --workdir=runs/x`.

Override any config key on the command line, e.g. `--config.train.steps=50`. An unknown
key is refused at once (the config is locked). Training is data-parallel over every local
device; launched as several processes (SLURM `srun`, `mpirun`, a multi-host TPU, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), the same command trains
over all of their devices (mtl_jax.parallel).
"""

import logging as std_logging
import signal
import sys

if __name__ == "__main__":  # Before anything allocates: see mtl_jax/hugepages.py.
  from mtl_jax import hugepages
  hugepages.reexec_with_huge_pages()

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import compile_cache, parallel, train
from mtl_jax.data.files import DataError
from mtl_jax.models.hf_io import CheckpointError
from mtl_jax.specs import ConfigError, unknown_key_message

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Training configuration (a configs/*.py file).",
    lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  parallel.initialize_distributed()  # Before anything touches a device.
  compile_cache.enable()  # A second identical run loads its compiled steps from disk.
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataError, CheckpointError, FloatingPointError) as e:
    # Problems with the user's input get one clear line, not a traceback.
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(130)  # The trainer has saved a checkpoint and said where.


class _QuietLibraries(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the console (warnings still show)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _raise_keyboard_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def run() -> None:
  """app.run, with ml_collections' error for an unknown --config key turned into one line."""
  try:
    app.run(main)
  except (AttributeError, KeyError) as e:
    if flags.FLAGS.is_parsed():  # Raised by the run itself: a real bug, keep the traceback.
      raise
    sys.exit(f"error: unknown config key in the command line: {unknown_key_message(e)}")


if __name__ == "__main__":
  run()
