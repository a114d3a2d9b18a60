"""Ctrl-C and SIGTERM during training: finish the current step, save, then stop.

Python's default Ctrl-C raises KeyboardInterrupt wherever the main thread happens to be,
usually inside the call of the jitted step, after the step has consumed (donated) the old
state's buffers and before the new state is assigned: both are lost, and the run resumes
from its last periodic checkpoint. So while training, the first SIGINT or SIGTERM only sets
a flag that the loop reads between steps; a second one interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from absl import logging

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
  """Truthy once a stop signal arrived; `name` says which."""

  def __init__(self):
    self.name: str | None = None

  def __bool__(self) -> bool:
    return self.name is not None


@contextlib.contextmanager
def stop_between_steps() -> Iterator[StopRequest]:
  """Within the block, SIGINT/SIGTERM set the yielded StopRequest (a second one raises
  KeyboardInterrupt). Off the main thread, where handlers cannot be set, it never fires."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  def handler(signum, frame):
    del frame
    if request:
      raise KeyboardInterrupt
    request.name = signal.Signals(signum).name
    logging.warning(
      "%s: stopping after this step to save a checkpoint (send it again to stop at once)",
      request.name,
    )

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield request
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
