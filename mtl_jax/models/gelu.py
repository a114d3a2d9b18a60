"""BERT's GELU in the form that XLA compiles fast.

BERT uses the exact GELU, x/2 (1 + erf(x/sqrt 2)) (`jax.nn.gelu` defaults to the tanh
approximation). `jax.nn.gelu(x, approximate=False)` computes it through erfc, which
XLA:CPU lowers to exponentials and selects: ~0.15 s a layer on the bench step. The erf
form is what PyTorch computes, one polynomial in XLA, and agrees with the erfc form within
1e-6; it made the LoRA step 24% and the full step 13% faster (BENCHMARKS.md).
"""

from __future__ import annotations

import jax
import numpy as np

_SQRT_HALF = np.float32(np.sqrt(0.5))


def exact_gelu(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))
