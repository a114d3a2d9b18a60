"""Generate the LoRA / rsLoRA / DoRA numerical reference fixture with PEFT.

NOT part of the mtl_jax package and never run by the tests or CI: it needs
torch, which must never be installed into the project venv. Run it from the
repo root in a separate scratch venv:

    python3 -m venv /work/scratch/ref-venv
    /work/scratch/ref-venv/bin/pip install torch==2.13.0 transformers safetensors peft numpy
    /work/scratch/ref-venv/bin/python scripts/make_peft_fixture.py

Writes tests/fixtures/peft_layers.npz (deterministic, fixed seeds). One
torch.nn.Linear(in=24, out=16) with random W0, b0 is wrapped by PEFT
(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0)) in three variants:
``lora``, ``rslora`` (use_rslora=True) and ``dora`` (use_dora=True).
lora_A and lora_B are overwritten with random NONZERO values (PEFT's B=0 init
would hide bugs), and the DoRA magnitude is perturbed away from the column
norm it is initialised to. Keys, per variant V:

    V/W0 [out, in]   base weight (torch layout)
    V/b0 [out]       base bias
    V/A  [r, in]     PEFT lora_A.weight
    V/B  [out, r]    PEFT lora_B.weight
    V/m  [out]       (dora only) PEFT lora_magnitude_vector
    V/scaling []     PEFT's scaling (alpha/r, or alpha/sqrt(r) for rslora)
    V/x  [5, in]     input
    V/y  [5, out]    PEFT output in eval mode
    V/y_merged [5, out]  output of merge_and_unload()'s plain Linear on x

plus top-level ``r`` and ``alpha``. All floats are float32.

Semantics (checked against PEFT below):
    lora/rslora: y = x W0^T + b0 + s * x A^T B^T
    dora:        W' = W0 + s * B A ;  y = (m / ||W'||_row) * (x W'^T) + b0
                 where ||W'||_row is the L2 norm of each output row of W'.
"""

from __future__ import annotations

import os

import numpy as np
import peft
import torch
from peft import LoraConfig, get_peft_model

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "peft_layers.npz")

IN, OUTF, R, ALPHA, BATCH = 24, 16, 4, 8, 5


class Tiny(torch.nn.Module):
  def __init__(self) -> None:
    super().__init__()
    self.proj = torch.nn.Linear(IN, OUTF)

  def forward(self, x):
    return self.proj(x)


def f32(t) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32).copy()


def make_variant(name: str, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  torch.manual_seed(seed)
  base = Tiny()
  with torch.no_grad():
    base.proj.weight.copy_(torch.from_numpy(rng.normal(0, 0.3, (OUTF, IN)).astype(np.float32)))
    base.proj.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, (OUTF,)).astype(np.float32)))
  cfg = LoraConfig(
    r=R,
    lora_alpha=ALPHA,
    lora_dropout=0.0,
    target_modules=["proj"],
    use_rslora=(name == "rslora"),
    use_dora=(name == "dora"),
    bias="none",
  )
  model = get_peft_model(base, cfg)
  layer = model.base_model.model.proj
  with torch.no_grad():
    layer.lora_A["default"].weight.copy_(
      torch.from_numpy(rng.normal(0, 0.3, (R, IN)).astype(np.float32))
    )
    layer.lora_B["default"].weight.copy_(
      torch.from_numpy(rng.normal(0, 0.3, (OUTF, R)).astype(np.float32))
    )
    if name == "dora":
      mag = layer.lora_magnitude_vector["default"].weight
      mag.copy_(mag * torch.from_numpy(rng.uniform(0.6, 1.4, (OUTF,)).astype(np.float32)))
  model.eval()

  x = rng.normal(0, 1.0, (BATCH, IN)).astype(np.float32)
  with torch.no_grad():
    y = f32(model(torch.from_numpy(x)))

  W0 = f32(layer.base_layer.weight)
  b0 = f32(layer.base_layer.bias)
  A = f32(layer.lora_A["default"].weight)
  B = f32(layer.lora_B["default"].weight)
  s = float(layer.scaling["default"])
  expected_s = ALPHA / np.sqrt(R) if name == "rslora" else ALPHA / R
  assert abs(s - expected_s) < 1e-9, (name, s)
  rec = {"W0": W0, "b0": b0, "A": A, "B": B, "x": x, "y": y, "scaling": np.array(s, np.float32)}

  # Independent float64 check of the documented semantics.
  W0d, Ad, Bd, xd = (a.astype(np.float64) for a in (W0, A, B, x))
  Wp = W0d + s * Bd @ Ad
  if name == "dora":
    m = f32(layer.lora_magnitude_vector["default"].weight)
    rec["m"] = m
    norm = np.linalg.norm(Wp, axis=1)
    assert np.abs(m - norm).max() > 1e-2, "magnitude trivially equals the norm"
    ref = (m / norm) * (xd @ Wp.T) + b0
  else:
    ref = xd @ Wp.T + b0
  err = np.abs(ref - y).max()
  assert err < 1e-5, (name, err)

  merged = model.merge_and_unload()
  assert isinstance(merged.proj, torch.nn.Linear)
  with torch.no_grad():
    rec["y_merged"] = f32(merged(torch.from_numpy(x)))
  err_m = np.abs(rec["y_merged"] - y).max()
  assert err_m < 1e-5, (name, err_m)
  print(
    f"{name}: scaling={s:.4f} |y|max={np.abs(y).max():.3f} "
    f"numpy-ref err={err:.2e} merged-vs-unmerged err={err_m:.2e}"
  )
  return rec


def main() -> None:
  print(f"torch {torch.__version__}, peft {peft.__version__}")
  out: dict[str, np.ndarray] = {"r": np.array(R, np.int32), "alpha": np.array(ALPHA, np.float32)}
  for seed, name in enumerate(["lora", "rslora", "dora"]):
    for k, v in make_variant(name, 100 + seed).items():
      out[f"{name}/{k}"] = v
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {sorted(out)}")


if __name__ == "__main__":
  main()
