"""mtl_jax.runtime.console: which library lines the programs keep off the console."""

from __future__ import annotations

import logging
import os

import pytest
from absl import logging as absl_logging

from mtl_jax.runtime import console


def _record(
  name: str, level: int, pathname: str = "x.py", msg: str = "message"
) -> logging.LogRecord:
  return logging.LogRecord(name, level, pathname, 1, msg, None, None)


ORBAX = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(console.__file__)))


@pytest.mark.parametrize(
  "record, shown",
  [
    (_record("jax._src.xla_bridge", logging.INFO), False),  # "Unable to initialize 'tpu'"
    (_record("jax._src.xla_bridge", logging.WARNING), True),  # "A GPU may be present..."
    (_record("absl", logging.INFO, ORBAX), False),
    (_record("absl", logging.WARNING, ORBAX), True),
    (_record("absl", logging.ERROR, ORBAX), False),  # mtl_jax says it in one line.
    # A save that waited for the last one (seen under load); the message as orbax words it.
    (
      _record(
        "absl", logging.WARNING, ORBAX, "Waiting for previous save to complete took %f seconds."
      ),
      False,
    ),
    (_record("absl", logging.INFO, os.path.join(PACKAGE, "train.py")), True),
    (_record("jax._src.compiler", logging.INFO), False),
  ],
)
def test_quiet_libraries_drops_only_library_info_lines(record, shown):
  assert console.QuietLibraries().filter(record) is shown


def test_debug_verbosity_shows_everything():
  before = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.DEBUG)
  try:
    assert console.QuietLibraries().filter(_record("jax._src.xla_bridge", logging.INFO))
  finally:
    absl_logging.set_verbosity(before)


def test_quiet_libraries_installs_one_filter():
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    console.quiet_libraries()
    console.quiet_libraries()
    assert sum(isinstance(f, console.QuietLibraries) for f in handler.filters) == 1
  finally:
    handler.filters[:] = before
