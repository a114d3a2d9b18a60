"""What the command-line programs keep off the console: libraries' INFO lines a user
cannot act on.

absl's `app.run` logs at INFO by default (main.py asks for INFO too, for its own progress
lines), which lets through orbax's several lines per save and restore and jax's probe of
every platform it knows ("Unable to initialize backend 'tpu'" on a machine without one).
`quiet_libraries` drops those INFO records from absl's handler; their warnings and errors
still show, and so does every line of this package. `--verbosity=1` (debug) shows them all.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

# Loggers whose INFO records are dropped: orbax by file (it logs through absl), jax's
# backend set-up by name (its probe of platforms that are not installed).
_QUIET_PATHS = (f"{os.sep}orbax{os.sep}",)
_QUIET_LOGGERS = ("jax._src.xla_bridge",)


class QuietLibraries(logging.Filter):
  """Drops the INFO (and DEBUG) records of the loggers above, unless absl's verbosity asks
  for debug output."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING or absl_logging.get_verbosity() >= absl_logging.DEBUG:
      return True
    return not (record.name in _QUIET_LOGGERS or any(p in record.pathname for p in _QUIET_PATHS))


def quiet_libraries() -> None:
  """Installs QuietLibraries on absl's handler (once)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
