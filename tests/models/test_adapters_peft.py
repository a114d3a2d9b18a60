"""LoRA / rsLoRA / DoRA dense layers against PEFT references.

tests/fixtures/peft_layers.npz was made by scripts/make_peft_fixture.py with
PEFT in a separate venv (torch is never imported here). One Linear(24 -> 16)
with random base weights and random NONZERO lora_A / lora_B (and, for DoRA, a
magnitude vector perturbed away from the row norms). ``y`` is PEFT's eval-mode
output; ``y_merged`` is the output of PEFT's merge_and_unload() layer.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models import adapters

FIXTURE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "peft_layers.npz"
)
TOL = 1e-5
KINDS = ["lora", "rslora", "dora"]


@pytest.fixture(scope="module")
def ref() -> dict:
  with np.load(FIXTURE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _setup(ref: dict, kind: str):
  r, alpha = int(ref["r"]), float(ref["alpha"])
  g = lambda k: ref[f"{kind}/{k}"]
  cfg = adapters.LoraConfig(kind=kind, rank=r, alpha=alpha, dropout=0.0)
  lora = {"a": jnp.asarray(g("A").T), "b": jnp.asarray(g("B").T)}
  if kind == "dora":
    lora["magnitude"] = jnp.asarray(g("m"))
  params = {"kernel": jnp.asarray(g("W0").T), "bias": jnp.asarray(g("b0")), "lora": lora}
  layer = adapters.AdaptedDense(features=g("W0").shape[0], lora=cfg)
  return cfg, layer, params, g


@pytest.mark.parametrize("kind", KINDS)
def test_adapted_dense_matches_peft(ref, kind):
  cfg, layer, params, g = _setup(ref, kind)
  with jax.default_matmul_precision("float32"):
    y = np.asarray(layer.apply({"params": params}, jnp.asarray(g("x")), deterministic=True))
  assert y.shape == g("y").shape
  diff = float(np.abs(y - g("y")).max())
  assert diff <= TOL, f"{kind}: max |jax - peft| = {diff:.3e}"


@pytest.mark.parametrize("kind", KINDS)
def test_merge_dense_matches_peft_merge(ref, kind):
  cfg, layer, params, g = _setup(ref, kind)
  merged = adapters.merge_dense(params, cfg)
  assert set(merged) == {"kernel", "bias"}
  kernel, bias = np.asarray(merged["kernel"]), np.asarray(merged["bias"])
  assert kernel.shape == g("W0").T.shape and bias.shape == g("b0").shape
  y = g("x").astype(np.float64) @ kernel.astype(np.float64) + bias
  d_merged = float(np.abs(y - g("y_merged")).max())
  d_unmerged = float(np.abs(y - g("y")).max())
  assert d_merged <= TOL, f"{kind}: max |merged jax - peft merged| = {d_merged:.3e}"
  assert d_unmerged <= TOL, f"{kind}: max |merged jax - peft| = {d_unmerged:.3e}"


def test_fixture_is_not_trivial(ref):
  # Adapters really change the output, and the variants differ in scaling.
  for kind in KINDS:
    base = ref[f"{kind}/x"] @ ref[f"{kind}/W0"].T + ref[f"{kind}/b0"]
    assert np.abs(base - ref[f"{kind}/y"]).max() > 0.1
    assert np.abs(ref[f"{kind}/B"]).min() > 0
  assert float(ref["lora/scaling"]) != float(ref["rslora/scaling"])
