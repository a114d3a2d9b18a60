"""Generate tests/fixtures/bert_activations.npz: the tiny BERT of tiny_bert.npz run through
Hugging Face's `BertModel` with each `hidden_act` mtl_jax reads besides "gelu".

NOT part of the mtl_jax package and never run by the tests or CI (it needs torch). Run it
from the repo root in the scratch venv of scripts/make_bert_fixture.py:

    /work/scratch/ref-venv/bin/python scripts/make_activation_fixture.py

Keys: `acts` (the activation names) and `last_hidden_state/<act>` (float32 [B, L, H]) for
tiny_bert.npz's inputs, eval mode, eager attention, float32.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
ACTS = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "tanh"]


def main() -> None:
  with np.load(os.path.join(FIXTURES, "tiny_bert.npz")) as f:
    ref = {k: f[k] for k in f.files}
  state = {
    k[len("weights/bert.") :]: torch.from_numpy(v)
    for k, v in ref.items()
    if k.startswith("weights/bert.")
  }
  out = {"acts": np.array(ACTS)}
  for act in ACTS:
    config = transformers.BertConfig(**json.loads(str(ref["config_json"])))
    config.hidden_act = act
    config._attn_implementation = "eager"
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    with torch.no_grad():
      hidden = model(
        input_ids=torch.from_numpy(ref["input_ids"]).long(),
        attention_mask=torch.from_numpy(ref["attention_mask"]).long(),
        token_type_ids=torch.from_numpy(ref["token_type_ids"]).long(),
      ).last_hidden_state
    out[f"last_hidden_state/{act}"] = hidden.numpy().astype(np.float32)
  np.savez_compressed(os.path.join(FIXTURES, "bert_activations.npz"), **out)
  print(
    f"wrote {len(ACTS)} activations; torch {torch.__version__}, transformers {transformers.__version__}"
  )


if __name__ == "__main__":
  main()
