"""Seed (a): multi-stream heads, cosine STS, [tanh(W·mean); CLS] pooling, PCGrad, rsLoRA.

Run: python main.py --config=configs/seeds/multistream_rslora_pcgrad.py \
         --workdir=runs/seeds/multistream_rslora_pcgrad
A CS224N minBERT project's best setting, at our budget (configs/pcgrad.py: bundled model,
300 steps, seed 0): every task reads [shared_dense(p); {task}_stream(p)] of the pooled
vector p = [tanh(W·mean); CLS]; STS stays 5·cos(u, v) (the default STS head); the adapter
is rsLoRA (scale alpha / sqrt(r)) with r=8, alpha=16 on query and value.
Report: ../shared/seeds/004_5922c7091d8b1fa8.txt, Table 5 (MS + CS, concatenated features,
PCGrad; BERT-base): dev 0.496 / 0.807 / 0.837. Ours: results ledgers (README, Results).
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.grad.method = "pcgrad"  # As configs/pcgrad.py.
  config.model.pooling = "concat"
  config.heads.kind = "multi_stream"
  config.heads.sts = "cosine"
  config.adapter.kind = "rslora"
  config.adapter.rank = 8
  config.adapter.alpha = 16.0
  return config
