"""What the command-line programs keep off the console: libraries' lines a user cannot act on.

absl's `app.run` logs at INFO by default (main.py asks for INFO too, for its own progress
lines), which lets through orbax's several lines per save and restore and jax's probe of
every platform it knows ("Unable to initialize backend 'tpu'" on a machine without one).
Orbax also logs each failed read or write as an ERROR with a traceback, from each of its
threads, while the error itself reaches mtl_jax, which says it in one line; and it warns
"Waiting for previous save to complete took N seconds" when a save finds the last one
still writing (a loaded disk or CPU), which asks nothing of the user. `QuietLibraries`
drops those records from absl's handler; libraries' other warnings still show, and so does
every line of this package. `--verbosity=1` (debug) shows them all.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ORBAX = f"{os.sep}orbax{os.sep}"
_SAVE_WAITED = "Waiting for previous save to complete"


class QuietLibraries(logging.Filter):
  """Keeps this package's records and libraries' warnings; drops libraries' INFO and DEBUG
  records, orbax's ERROR records (said again, in one line, by mtl_jax) and its warning
  that a save waited for the previous one."""

  def filter(self, record: logging.LogRecord) -> bool:
    if absl_logging.get_verbosity() >= absl_logging.DEBUG:
      return True
    if _ORBAX in record.pathname and (
      record.levelno == logging.ERROR or str(record.msg).startswith(_SAVE_WAITED)
    ):
      return False
    if os.path.abspath(record.pathname).startswith(_PACKAGE):
      return True
    return record.levelno >= logging.WARNING


def quiet_libraries() -> None:
  """Installs QuietLibraries on absl's handler (once)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
