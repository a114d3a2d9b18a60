"""Low-rank adapters on dense layers: LoRA, rsLoRA and DoRA.

An `AdaptedDense` is a drop-in `nn.Dense` whose adapter weights live in their own
parameter subtree, `<layer>/lora/{a, b[, magnitude]}`, beside the frozen base
`<layer>/{kernel, bias}`. That keeps the trainable/frozen split a matter of parameter
paths (see `mtl_jax.models.multitask.trainable_mask`), and lets `merge_dense` fold the
adapter back into a plain dense layer for inference.

Layouts (Flax, [in, out]) versus PEFT (PyTorch, [out, in]):
  kernel = base_layer.weight.T, a = lora_A.weight.T [in, r], b = lora_B.weight.T [r, out],
  magnitude = lora_magnitude_vector [out].

References: Hu et al. 2021 (LoRA); Kalajdzievski 2023 (rsLoRA: scale alpha / sqrt(r));
Liu et al. 2024 (DoRA, with the column norm detached from the gradient, their Sec. 4.3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.dropout import Dropout

KINDS = ("lora", "rslora", "dora")
# Hugging Face BERT module names an adapter can be put on.
TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which low-rank adapter to add to a dense layer, and how large."""

  kind: str = "lora"  # One of KINDS.
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0  # On the adapter branch's input only, as in PEFT.
  targets: tuple[str, ...] = ("query", "value")  # Which dense layers (TARGETS).
  layers: tuple[int, ...] | None = None  # Which encoder layers; None = all.

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown LoRA kind {self.kind!r}; expected one of {KINDS}")
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    if not self.alpha > 0:  # 0 switches the adapter off; a negative one only flips its sign.
      raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown or not self.targets:
      raise ValueError(f"unknown LoRA targets {unknown or '(none)'}; choose from {TARGETS}")

  def applies_to(self, layer: int, target: str) -> bool:
    return target in self.targets and (self.layers is None or layer in self.layers)

  @property
  def scale(self) -> float:
    """alpha / r for LoRA and DoRA; alpha / sqrt(r) for rsLoRA."""
    if self.kind == "rslora":
      return self.alpha / math.sqrt(self.rank)
    return self.alpha / self.rank


def lora_a_init(key: jax.Array, shape: tuple[int, int], dtype: Any = jnp.float32) -> jax.Array:
  """PEFT's init of A: kaiming_uniform(a=sqrt(5)) on the [r, in] weight = U(+-1/sqrt(in))."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def column_norm(kernel: jax.Array) -> jax.Array:
  """DoRA's per-output-unit norm: PEFT's norm(W, dim=1) on [out, in] = axis 0 of [in, out]."""
  return jnp.linalg.norm(kernel, axis=0)


class _LoraWeights(nn.Module):
  """Holds the adapter parameters so that they form the `lora` subtree."""

  features_in: int
  features_out: int
  config: LoraConfig

  @nn.compact
  def __call__(self, kernel: jax.Array) -> dict[str, jax.Array]:
    r = self.config.rank
    weights = {
      "a": self.param("a", lora_a_init, (self.features_in, r)),
      "b": self.param("b", nn.initializers.zeros, (r, self.features_out)),
    }
    if self.config.kind == "dora":
      # Initialised to ||W0|| so that step 0 equals the base layer; after loading
      # pretrained weights call `reset_dora_magnitudes`.
      weights["magnitude"] = self.param("magnitude", lambda _: column_norm(kernel))
    return weights


class AdaptedDense(nn.Module):
  """nn.Dense (kernel [in, out] + bias) with an optional LoRA/rsLoRA/DoRA branch."""

  features: int
  lora: LoraConfig | None = None
  kernel_init: Callable = nn.initializers.normal(0.02)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x = x.astype(self.dtype)
    base = x @ kernel.astype(self.dtype)
    if self.lora is None:
      return base + bias.astype(self.dtype)

    cfg = self.lora
    w = _LoraWeights(x.shape[-1], self.features, cfg, name="lora")(kernel)
    a, b = w["a"].astype(self.dtype), w["b"].astype(self.dtype)
    use_dropout = cfg.dropout > 0 and not deterministic
    x_adapter = Dropout(cfg.dropout)(x, deterministic=not use_dropout)
    delta = (x_adapter @ a) @ b * cfg.scale
    if cfg.kind != "dora":
      return base + delta + bias.astype(self.dtype)

    # DoRA: y = m / ||W0 + s B A|| * (x W0 + s x A B) + bias, the norm detached (PEFT).
    norm = column_norm(kernel + cfg.scale * (w["a"] @ w["b"]))
    mag_scale = (w["magnitude"] / jax.lax.stop_gradient(norm)).astype(self.dtype)
    if use_dropout:  # PEFT: the base output keeps the undropped input.
      base_on_dropped = x_adapter @ kernel.astype(self.dtype)
      return base + (mag_scale - 1) * base_on_dropped + mag_scale * delta + bias.astype(self.dtype)
    return mag_scale * (base + delta) + bias.astype(self.dtype)


def merge_dense(params: dict, config: LoraConfig) -> dict:
  """Folds an adapter into the base weights: returns a plain {'kernel', 'bias'}."""
  lora = params["lora"]
  kernel = params["kernel"] + config.scale * (lora["a"] @ lora["b"])
  if config.kind == "dora":
    kernel = kernel * (lora["magnitude"] / column_norm(kernel))
  return {"kernel": kernel, "bias": params["bias"]}


def _is_adapted(node: Any) -> bool:
  return isinstance(node, dict) and "kernel" in node and "lora" in node


def merge_all(params: dict, config: LoraConfig | None) -> dict:
  """Merges every adapted dense layer in a parameter tree (no-op when config is None)."""
  if config is None:
    return params
  if _is_adapted(params):
    return merge_dense(params, config)
  if isinstance(params, dict):
    return {k: merge_all(v, config) for k, v in params.items()}
  return params


def reset_dora_magnitudes(params: dict) -> dict:
  """Sets every DoRA magnitude to the column norm of its (pretrained) base kernel + BA."""
  if _is_adapted(params) and "magnitude" in params["lora"]:
    # Fresh adapters have B = 0, so ||W0 + s B A|| = ||W0||.
    return {**params, "lora": {**params["lora"], "magnitude": column_norm(params["kernel"])}}
  if isinstance(params, dict):
    return {k: reset_dora_magnitudes(v) for k, v in params.items()}
  return params
