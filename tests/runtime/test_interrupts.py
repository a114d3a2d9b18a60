"""The first Ctrl-C/SIGTERM in training is a request honoured between steps; a second one
interrupts at once; the previous handlers come back afterwards."""

import os
import signal

import pytest

from mtl_jax.runtime import interrupts


@pytest.mark.parametrize("sig", interrupts.SIGNALS)
def test_first_signal_requests_a_stop_second_interrupts(sig):
  before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
  with interrupts.stop_between_steps() as request:
    assert not request
    os.kill(os.getpid(), sig)
    assert request and request.name == signal.Signals(sig).name
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), sig)
  assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before


def test_handlers_are_restored_when_the_block_raises():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(ValueError):
    with interrupts.stop_between_steps():
      raise ValueError("a failing step")
  assert signal.getsignal(signal.SIGTERM) is before
