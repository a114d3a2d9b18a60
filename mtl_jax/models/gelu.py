"""BERT's GELU in the form that XLA compiles fast, and the other feed-forward activations
a Hugging Face BERT's config.json may name (`hidden_act`).

BERT uses the exact GELU, x/2 (1 + erf(x/sqrt 2)) (`jax.nn.gelu` defaults to the tanh
approximation). `jax.nn.gelu(x, approximate=False)` computes it through erfc, which
XLA:CPU lowers to exponentials and selects, a costly part of every layer. The erf form is
what PyTorch computes, one polynomial in XLA, and agrees with the erfc form within 1e-6;
it makes the step faster (BENCHMARKS.md, "Where the time goes").

`OTHER_ACTIVATIONS` follows transformers' ACT2FN definitions of the same names; the
encoder matches `BertModel` with each of them (tests/models/test_bert_parity.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

_SQRT_HALF = np.float32(np.sqrt(0.5))


def exact_gelu(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))


def _tanh_gelu(x: jax.Array) -> jax.Array:
  """GELU's tanh approximation (transformers' gelu_new, gelu_pytorch_tanh, gelu_fast)."""
  return jax.nn.gelu(x, approximate=True)


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


# hidden_act names other than BERT's "gelu" (and its alias "gelu_python"), exact_gelu's.
OTHER_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "gelu_new": _tanh_gelu,
  "gelu_pytorch_tanh": _tanh_gelu,
  "gelu_fast": _tanh_gelu,
  "quick_gelu": _quick_gelu,
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "tanh": jax.numpy.tanh,
}
