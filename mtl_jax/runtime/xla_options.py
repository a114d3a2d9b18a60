"""XLA compiler options for the train step.

On CPU, XLA (jax 0.10) hands each dense layer's backward matmul, fused with the
elementwise work around it (GELU derivative, LayerNorm backward, dropout mask), to
YNNPACK as one fusion, and those fused kernels run far below the speed of the same matmul
alone; turning the fusions off (XLA's own matmuls and elementwise fusions) makes the step
faster with the same loss (measurements: BENCHMARKS.md, "Where the time goes"). Other
backends get no options.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # No YNNPACK fusions.


@functools.cache
def train_step_options() -> dict | None:
  """compiler_options for jax.jit of the train step: the CPU options where this jaxlib
  knows them (an older one refuses unknown options), else None."""
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(jnp.sin, compiler_options=_CPU_OPTIONS).lower(jnp.zeros(2)).compile()
  except Exception:  # An XLA without these options: keep its defaults.
    return None
  return dict(_CPU_OPTIONS)
