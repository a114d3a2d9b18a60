"""benchmarks/profile_step.py: op events of a trace summed by kind and output shape."""

from __future__ import annotations

import gzip
import json

from benchmarks import profile_step

HLO = """
  %dot.12 = f32[3,64,64]{2,1,0} dot(%a, %b), lhs_contracting_dims={2}
  ROOT %multiply_add_fusion.3 = f32[384]{0} fusion(%c), kind=kLoop
  %dot.13 = f32[3,64,64]{2,1,0} dot(%a, %d), lhs_contracting_dims={2}
"""


def test_events_are_summed_by_kind_and_shape_per_step(tmp_path):
  events = [
    {"ph": "X", "name": "dot.12", "dur": 3_000_000},
    {"ph": "X", "name": "dot.13", "dur": 1_000_000},
    {"ph": "X", "name": "multiply_add_fusion.3", "dur": 500_000},
    {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9_000_000},  # Not an op.
    {"ph": "X", "name": "$bench.py:176 run", "dur": 9_000_000},  # Python, not an op.
    {"ph": "i", "name": "dot.12"},  # Not a duration event.
  ]
  trace = tmp_path / "t.trace.json.gz"
  with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": events}, f)
  shapes = profile_step.output_shapes(HLO)
  assert shapes["dot.12"] == "f32[3,64,64]{2,1,0}"
  assert shapes["multiply_add_fusion.3"] == "f32[384]{0}"
  rows = profile_step.summarize(str(trace), shapes, steps=2)
  assert rows == [
    (2.0, 1, "dot", "f32[3,64,64]{2,1,0}"),
    (0.25, 0, "multiply_add_fusion", "f32[384]{0}"),
  ]
