"""Check an `mtl_jax.export` directory with PyTorch's transformers.BertModel.

NOT part of the mtl_jax package and never run by the tests: it needs torch, which must
never be installed into the project venv. Run it with the scratch venv:

    python -m mtl_jax.embed --workdir=WORKDIR --input=sents.txt --output=emb.npz
    python -m mtl_jax.export --workdir=WORKDIR --output=export_dir
    /work/scratch/ref-venv/bin/python scripts/check_export_with_torch.py \
        export_dir emb.npz [--input sents.txt] [--max_length 128] [--atol 1e-4]

Loads `BertModel.from_pretrained(export_dir)` (every weight must be found, none unused),
runs it on the .npz's input_ids / attention_mask / token_type_ids and compares its
last_hidden_state (real tokens only) and the pooled vectors (the export's pooling,
from mtl_jax.json) with the .npz that mtl_jax.embed wrote from the unmerged fine-tuned
run. With --input, the exported tokenizer files must also re-encode the text to the same
ids. Prints the max abs differences; exits 1 if one exceeds --atol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from transformers import BertModel, BertTokenizerFast


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("export_dir")
  parser.add_argument("embed_npz", help="mtl_jax.embed --workdir output for the same run")
  parser.add_argument("--input", help="the text file given to mtl_jax.embed")
  parser.add_argument("--max_length", type=int, default=128, help="as given to mtl_jax.embed")
  parser.add_argument("--atol", type=float, default=1e-4)
  args = parser.parse_args()

  with np.load(args.embed_npz) as f:
    ref = {k: f[k] for k in f.files}
  with open(os.path.join(args.export_dir, "mtl_jax.json")) as f:
    pooling = json.load(f)["pooling"]

  model, info = BertModel.from_pretrained(
    args.export_dir, output_loading_info=True, attn_implementation="eager"
  )
  model.eval()
  problems = {k: v for k, v in info.items() if v}
  print(f"loading info: {problems or 'all weights found, none unused'}")

  ok = not problems
  if args.input:
    tokenizer = BertTokenizerFast.from_pretrained(args.export_dir)
    with open(args.input, encoding="utf-8") as f:
      parts = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    first = [p[0] for p in parts]
    second = [p[1] for p in parts] if len(parts[0]) == 2 else None
    enc = tokenizer(
      first,
      second,
      truncation=True,
      max_length=args.max_length,
      padding="longest",
      return_tensors="np",
    )
    same = all(
      np.array_equal(enc[k], ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids")
    )
    print(f"exported tokenizer re-encodes the input identically: {same}")
    ok &= same

  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(ref["input_ids"].astype(np.int64)),
      attention_mask=torch.from_numpy(ref["attention_mask"].astype(np.int64)),
      token_type_ids=torch.from_numpy(ref["token_type_ids"].astype(np.int64)),
    )
  hidden = out.last_hidden_state.numpy()
  mask = ref["attention_mask"].astype(bool)
  diff_hidden = float(np.abs(hidden[mask] - ref["last_hidden_state"][mask]).max())
  if pooling == "cls":
    pooled = hidden[:, 0]
  else:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)
  diff_pooled = float(np.abs(pooled - ref["pooled"]).max())
  scale = float(np.abs(ref["last_hidden_state"][mask]).max())
  print(f"{len(mask)} sequences, {int(mask.sum())} real tokens, |hidden| up to {scale:.3g}")
  print(f"max abs diff last_hidden_state (real tokens): {diff_hidden:.3e}")
  print(f"max abs diff pooled ({pooling}): {diff_pooled:.3e}")
  ok &= diff_hidden <= args.atol and diff_pooled <= args.atol
  print("OK" if ok else f"FAILED (atol {args.atol})")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
