"""Reading and writing Hugging Face BERT checkpoints (config.json + model.safetensors, or
the shards a `model.safetensors.index.json` lists; float32, float16 or bfloat16 tensors).

Name mapping, Hugging Face -> Flax (an optional `bert.` prefix is stripped; the pooler, the
`position_ids` buffer and every tensor outside `embeddings.` and `encoder.` -- the `cls.*`
pre-training heads, a fine-tuned model's `classifier.*` or `qa_outputs.*` -- are ignored):

  embeddings.{word,position,token_type}_embeddings.weight -> embeddings/<same>/embedding
  embeddings.LayerNorm.{weight|gamma, bias|beta}           -> embeddings/layer_norm/{scale, bias}
  encoder.layer.i.attention.self.{query,key,value}          -> layer_i/attention/{query,key,value}
  encoder.layer.i.attention.output.dense                    -> layer_i/attention/attention_output
  encoder.layer.i.attention.output.LayerNorm                -> layer_i/attention_norm
  encoder.layer.i.intermediate.dense                        -> layer_i/intermediate
  encoder.layer.i.output.dense                              -> layer_i/output
  encoder.layer.i.output.LayerNorm                          -> layer_i/output_norm

Linear layers: Hugging Face `weight` is [out, in]; a Flax kernel is [in, out], so it is
transposed both ways. Biases and LayerNorm vectors are copied as they are.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable

import ml_dtypes  # noqa: F401  (numpy then knows bfloat16, which safetensors needs to read it)
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mtl_jax.models.bert import BertConfig


class CheckpointError(ValueError):
  """A model directory that cannot be read, with what to do about it."""


_LAYER_MODULES = {
  "attention.self.query": ("attention", "query"),
  "attention.self.key": ("attention", "key"),
  "attention.self.value": ("attention", "value"),
  "attention.output.dense": ("attention", "attention_output"),
  "attention.output.LayerNorm": ("attention_norm",),
  "intermediate.dense": ("intermediate",),
  "output.dense": ("output",),
  "output.LayerNorm": ("output_norm",),
}
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")
# Tensors that are not the encoder's: its pooler and buffers, and any task head beside it.
_IGNORED = re.compile(r"^(?!embeddings\.|encoder\.)|^embeddings\.position_ids$")
_LEAF = {"weight": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}


def _flax_path(hf_name: str) -> tuple[tuple[str, ...], bool]:
  """Maps a (prefix-stripped, not `_IGNORED`) HF name to (Flax path, needs transpose)."""
  module, _, leaf = hf_name.rpartition(".")
  if module.startswith("embeddings."):
    name = module.split(".", 1)[1]
    if name in _EMBEDDINGS and leaf == "weight":
      return ("embeddings", name, "embedding"), False
    if name == "LayerNorm" and leaf in _LEAF:
      return ("embeddings", "layer_norm", "scale" if leaf in ("weight", "gamma") else "bias"), False
  m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
  if m and m.group(2) in _LAYER_MODULES and leaf in _LEAF:
    path = (f"layer_{m.group(1)}",) + _LAYER_MODULES[m.group(2)]
    is_norm = m.group(2).endswith("LayerNorm")
    flax_leaf = ("scale" if leaf in ("weight", "gamma") else "bias") if is_norm else _LEAF[leaf]
    return path + (flax_leaf,), flax_leaf == "kernel"
  raise CheckpointError(f"unexpected tensor {hf_name!r}: this does not look like a BERT encoder")


def _require(path: str, name: str, hint: str) -> str:
  full = os.path.join(path, name)
  if not os.path.isfile(full):
    raise CheckpointError(f"{full} not found. {hint}")
  return full


# A Hub repository id: `name` or `owner/name`, letters, digits, `-`, `_`, `.` (as the Hub allows).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# What a BERT directory needs from a Hub repository; its other files (PyTorch, TF, ONNX
# weights) are never downloaded.
_HUB_FILES = [
  "config.json",
  "model.safetensors",
  "model.safetensors.index.json",
  "model-*-of-*.safetensors",
  "vocab.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
]


def local_dir(path: str) -> str:
  """`path` itself when it is a directory, else the local snapshot of the Hub id `path`.

  A Hub id is looked up in the Hugging Face cache first (HF_HOME, HF_HUB_CACHE) and
  downloaded only when that misses and the Hub is reachable (not HF_HUB_OFFLINE=1).
  """
  if os.path.isdir(path):
    return path
  if not _HUB_ID.fullmatch(path) or path.startswith((".", "~")) or os.path.exists(path):
    raise CheckpointError(
      f"model directory {path!r} does not exist (set --config.model.path "
      "to a local Hugging Face BERT directory or a Hub id)"
    )
  from huggingface_hub import snapshot_download  # Installed with transformers.
  from huggingface_hub.errors import HFValidationError

  try:
    return snapshot_download(path, allow_patterns=_HUB_FILES, local_files_only=True)
  except HFValidationError as e:
    raise CheckpointError(f"model {path!r} is neither a directory nor a valid Hub id: {e}") from e
  except Exception:  # Not cached (LocalEntryNotFoundError and friends): try the Hub.
    pass
  offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
  if not offline:
    try:
      return snapshot_download(path, allow_patterns=_HUB_FILES)
    except Exception as e:  # No network, unknown repository, gated, ...
      reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  else:
    reason = "HF_HUB_OFFLINE is set"
  from huggingface_hub import constants

  raise CheckpointError(
    f"model {path!r} is not a local directory, not in the Hugging Face cache "
    f"({constants.HF_HUB_CACHE}) and could not be downloaded ({reason}). Download it where "
    f"there is a network (`hf download {path}`, or save_pretrained to a directory) and set "
    "HF_HOME to that cache, or set --config.model.path to the directory"
  )


def read_config(path: str, **overrides) -> BertConfig:
  """The BertConfig of a Hugging Face model directory (or Hub id, see local_dir)."""
  path = local_dir(path)
  cfg_file = _require(path, "config.json", "A Hugging Face BERT directory needs config.json.")
  try:
    with open(cfg_file, encoding="utf-8") as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(
      f"{cfg_file}, line {e.lineno}: not valid JSON ({e.msg}): restore the "
      "model directory's config.json (copy or download it again)"
    ) from e
  except (OSError, UnicodeDecodeError) as e:
    raise CheckpointError(f"cannot read {cfg_file}: {e}") from e
  if not isinstance(hf, dict):
    raise CheckpointError(
      f"{cfg_file}: a Hugging Face config.json holds a JSON object, not {type(hf).__name__}"
    )
  if hf.get("model_type", "bert") != "bert":
    raise CheckpointError(f"{cfg_file}: model_type {hf.get('model_type')!r} is not 'bert'")
  try:
    return BertConfig.from_hf(hf, **overrides)
  except KeyError as e:
    raise CheckpointError(f"{cfg_file} lacks {e}, which a BERT config.json gives") from e
  except ValueError as e:
    raise CheckpointError(f"{cfg_file}: {e}") from e
  except TypeError as e:  # A value of the wrong type, e.g. "hidden_act": ["gelu"].
    raise CheckpointError(f"{cfg_file}: a value has the wrong type ({e})") from e


def load_bert(path: str, base: BertConfig | None = None, **overrides) -> tuple[BertConfig, dict]:
  """Reads a Hugging Face BERT directory (or Hub id) -> (config, Flax encoder params).

  The params hold the pretrained base weights only (no adapters); see
  `mtl_jax.models.multitask.build`, which lays them over a freshly initialised full tree
  (adapters, task layers and heads). `base`: the directory's config.json when the caller
  has already read it (read_config), with `overrides` applied here.
  """
  path = local_dir(path)
  config = (
    read_config(path, **overrides) if base is None else dataclasses.replace(base, **overrides)
  )
  tensors, st = read_weights(path, keep=lambda name: not _IGNORED.match(strip_prefix(name)))
  params: dict = {}
  for name, value in tensors.items():
    path_, transpose = _flax_path(strip_prefix(name))
    node = params
    for key in path_[:-1]:
      node = node.setdefault(key, {})
    node[path_[-1]] = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
  _check_shapes(params, config, st)
  return config, params


def encoder_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
  """Flax path -> shape of every encoder weight that config.json's architecture has."""
  h, f = c.hidden_size, c.intermediate_size
  shapes = {
    "embeddings/word_embeddings/embedding": (c.vocab_size, h),
    "embeddings/position_embeddings/embedding": (c.max_position_embeddings, h),
    "embeddings/token_type_embeddings/embedding": (c.type_vocab_size, h),
    "embeddings/layer_norm/scale": (h,),
    "embeddings/layer_norm/bias": (h,),
  }
  dense = {
    "attention/query": (h, h),
    "attention/key": (h, h),
    "attention/value": (h, h),
    "attention/attention_output": (h, h),
    "intermediate": (h, f),
    "output": (f, h),
  }
  for i in range(c.num_layers):
    for name, (d_in, d_out) in dense.items():
      shapes[f"layer_{i}/{name}/kernel"] = (d_in, d_out)
      shapes[f"layer_{i}/{name}/bias"] = (d_out,)
    for norm in ("attention_norm", "output_norm"):
      shapes[f"layer_{i}/{norm}/scale"] = (h,)
      shapes[f"layer_{i}/{norm}/bias"] = (h,)
  return shapes


def _check_shapes(params: dict, config: BertConfig, source: str) -> None:
  """Every tensor where config.json's architecture puts it, with its shape, and none
  missing: a config.json that disagrees with its weights is named here, by every tool."""
  expected = encoder_shapes(config)
  loaded = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}
  extra = sorted(set(loaded) - set(expected))
  if extra:
    raise CheckpointError(
      f"{source} holds {extra[0]} ({len(extra)} such tensor(s)), which the architecture of "
      f"config.json ({config.num_layers} layers) has no place for: config.json and the "
      "weights disagree"
    )
  for path, shape in expected.items():
    if path in loaded and loaded[path] != shape:
      raise CheckpointError(
        f"{path}: {source} holds shape {loaded[path]}, config.json's architecture needs "
        f"{shape}: config.json and the weights disagree"
      )
  missing = sorted(set(expected) - set(loaded))
  if missing:
    raise CheckpointError(
      f"{source} lacks {missing[:3]} ({len(missing)} tensor(s)): not a complete BERT encoder"
    )


def strip_prefix(name: str) -> str:
  """A tensor name without the `bert.` prefix of BertFor* checkpoints."""
  return name[len("bert.") :] if name.startswith("bert.") else name


def read_weights(
  path: str, keep: Callable[[str], bool] = lambda name: True
) -> tuple[dict[str, np.ndarray], str]:
  """(HF name -> tensor as stored, the file to name in errors) of the model directory
  `path`: model.safetensors, or the shards model.safetensors.index.json lists. Only the
  tensors whose (stored) names `keep` accepts are read, and only the shards holding them."""
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(single):
    return _load_safetensors(single, keep), single
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    return _load_shards(index, keep), index
  other = [
    f
    for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
    if os.path.exists(os.path.join(path, f))
  ]
  found = f" (found {', '.join(other)})" if other else ""
  raise CheckpointError(
    f"{single} not found{found}. mtl_jax reads only safetensors; convert once with "
    "`BertModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)` "
    "in an environment that has PyTorch."
  )


def _load_shards(index: str, keep: Callable[[str], bool]) -> dict[str, np.ndarray]:
  """The kept tensors of a sharded checkpoint, from the shards its index's weight_map
  names for them."""
  try:
    with open(index, encoding="utf-8") as f:
      weight_map = {k: v for k, v in json.load(f)["weight_map"].items() if keep(k)}
    shards = sorted(set(weight_map.values()))
  except (
    OSError,
    UnicodeDecodeError,
    json.JSONDecodeError,
    KeyError,
    TypeError,
    AttributeError,
  ) as e:
    raise CheckpointError(
      f"{index} is not a readable shard index ({type(e).__name__}: {e}): it needs a JSON "
      '"weight_map" from tensor names to shard files; copy or download the model again'
    ) from e
  tensors: dict[str, np.ndarray] = {}
  for shard in shards:
    file = os.path.join(os.path.dirname(index), str(shard))
    if not os.path.isfile(file):
      raise CheckpointError(f"{file} not found: {index} lists it as a shard of the model")
    tensors.update(_load_safetensors(file, keep))
  missing = sorted(set(weight_map) - set(tensors))
  if missing:
    raise CheckpointError(
      f"{index} maps {len(missing)} tensor(s) to shards that lack them, e.g. {missing[0]!r}"
    )
  return tensors


def _load_safetensors(path: str, keep: Callable[[str], bool]) -> dict[str, np.ndarray]:
  """The kept tensors of one file, with a truncated or garbage file reported on one line
  naming it."""
  try:
    with safe_open(path, "np") as f:
      return {name: f.get_tensor(name) for name in f.keys() if keep(name)}
  except (SafetensorError, OSError, ValueError, MemoryError) as e:
    raise CheckpointError(
      f"{path} is not a readable safetensors file ({' '.join(str(e).split())[:200]}): it is "
      "truncated or damaged; copy or download the model directory again"
    ) from e


def save_safetensors(tensors: dict, path: str, metadata: dict[str, str]) -> None:
  """save_file, readable as the umask allows like any other file (it writes 0600)."""
  save_file(tensors, path, metadata=metadata)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def save_bert(path: str, config: BertConfig, params: dict) -> None:
  """Writes merged (adapter-free) encoder params as a Hugging Face BERT directory."""
  os.makedirs(path, exist_ok=True)
  tensors = {}
  for name in _EMBEDDINGS:
    tensors[f"embeddings.{name}.weight"] = params["embeddings"][name]["embedding"]
  tensors["embeddings.LayerNorm.weight"] = params["embeddings"]["layer_norm"]["scale"]
  tensors["embeddings.LayerNorm.bias"] = params["embeddings"]["layer_norm"]["bias"]
  for i in range(config.num_layers):
    layer = params[f"layer_{i}"]
    for hf_module, flax_path in _LAYER_MODULES.items():
      node = layer
      for key in flax_path:
        node = node[key]
      prefix = f"encoder.layer.{i}.{hf_module}"
      if "lora" in node:
        raise ValueError(f"{prefix} still has an adapter: merge before saving")
      if "kernel" in node:
        tensors[f"{prefix}.weight"] = np.asarray(node["kernel"]).T
      else:
        tensors[f"{prefix}.weight"] = node["scale"]
      tensors[f"{prefix}.bias"] = node["bias"]
  tensors = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
  save_safetensors(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config.to_hf(), f, indent=2)


def load_tokenizer(path: str, vocab_size: int | None = None):
  """transformers' fast BERT tokenizer from vocab.txt or tokenizer.json in `path` (or Hub
  id), checked against the model's vocab_size (read from config.json when not given)."""
  path = local_dir(path)
  if not any(os.path.isfile(os.path.join(path, f)) for f in ("vocab.txt", "tokenizer.json")):
    raise CheckpointError(f"{path} has neither vocab.txt nor tokenizer.json for the tokenizer")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  from transformers import BertTokenizerFast  # Slow import; only where needed.

  tokenizer = BertTokenizerFast.from_pretrained(path, local_files_only=True)
  vocab_size = vocab_size or read_config(path).vocab_size
  if len(tokenizer) > vocab_size:  # JAX's gather would give NaN for the ids past the table.
    raise CheckpointError(
      f"the tokenizer in {path} has {len(tokenizer)} tokens but config.json's vocab_size is "
      f"{vocab_size}: ids past {vocab_size - 1} have no embedding; the tokenizer and the "
      "weights do not belong together"
    )
  return tokenizer
