"""The benchmark's step runner on a tiny model: the table's numbers are consistent."""

import pytest

from mtl_jax.config import defaults as default
from mtl_jax.tools import bench


@pytest.mark.parametrize("method", ["summed", "pcgrad"])
def test_run_one_reports_consistent_numbers(tiny_bert_dir, method):
  row = bench.run_one(method, "lora", seqs_per_task=4, length=16, steps=2, model_path=tiny_bert_dir)
  assert row["method"] == method and row["mode"] == "lora"
  assert row["step_s"] > 0 and row["examples_per_s"] == pytest.approx(8 / row["step_s"])
  assert row["flops_per_step"] > 0
  # Adam keeps two moments per trainable parameter (plus a few scalars).
  assert row["opt_state_mib"] * 2**20 >= 2 * 4 * row["trainable"]


def test_step_runner_trains_one_step_per_call(tiny_bert_dir):
  """What torch_reference.py --with_jax alternates with PyTorch's steps: each call is a
  training step on the same batch from the state the previous call left, so the loss of
  every call differs (a runner that re-ran its first state would repeat one loss)."""
  run = bench.step_runner("pcgrad", "full", seqs_per_task=4, length=16, model_path=tiny_bert_dir)
  losses = [run() for _ in range(3)]
  assert all(loss == loss and loss > 0 for loss in losses)  # Finite, not NaN.
  assert len(set(losses)) == 3
  assert "HloModule" in run.compiled.as_text()  # What benchmarks/profile_step.py reads.


def test_real_lengths_times_the_trainers_packed_batches(tiny_bert_dir, monkeypatch):
  # real_batches reads and tokenizes every row of the real data (seconds of CPU): the
  # batches run_one drew are kept, and checked to be those of the trainer's config below.
  drawn = []
  real_batches = bench.real_batches
  monkeypatch.setattr(
    bench, "real_batches", lambda *a: drawn.append((a, real_batches(*a))) or drawn[-1][1]
  )
  row = bench.run_one(
    "pcgrad",
    "lora",
    seqs_per_task=4,
    length=16,
    steps=2,
    model_path=tiny_bert_dir,
    real_lengths=True,
  )
  # Real sentences, packed: some padding is left, and the step saw exactly these tokens.
  assert 0 < row["real_tokens"] < row["computed_tokens"]
  assert row["shapes"] >= 1 and row["flops_per_step"] > 0
  # The same batches as the trainer's first steps (steps 2 and 3 are the timed ones).
  config = default.get_config()
  config.model.path, config.train.seqs_per_task = tiny_bert_dir, 4
  [((used, steps, positions), batches)] = drawn
  assert (steps, positions) == (4, 64)
  # The trainer's config but for the gradient method, which draws no batch.
  assert used.grad.method == "pcgrad"
  used = used.copy_and_resolve_references()
  used.grad.method = config.grad.method
  assert used.to_dict() == config.to_dict()
  timed = [b["attention_mask"] for b in batches[2:]]
  assert row["real_tokens"] == sum(m.sum() for m in timed) / 2
  assert row["computed_tokens"] == sum(m.size for m in timed) / 2


def test_table_relates_each_method_to_the_summed_step():
  rows = [
    {
      "method": m,
      "mode": "lora",
      "step_s": s,
      "examples_per_s": 1.0,
      "flops_per_step": 1e9,
      "flops_per_s": 1e9 / s,
      "opt_state_mib": 1.0,
      "trainable": 10,
      "peak_rss_mib": 100.0,
    }
    for m, s in (("summed", 2.0), ("pcgrad", 2.2))
  ]
  text = bench.table(rows, peak=1e10)
  assert "| lora | pcgrad | 2.20 |" in text and "1.10x" in text


def test_without_a_summed_row_vs_summed_says_so_instead_of_nan():
  rows = [
    {
      "method": "pcgrad",
      "mode": "full",
      "step_s": 2.0,
      "examples_per_s": 1.0,
      "flops_per_step": 1e9,
      "flops_per_s": 5e8,
      "opt_state_mib": 1.0,
      "trainable": 10,
      "peak_rss_mib": 100.0,
    }
  ]
  text = bench.table(rows, peak=1e10, header="machine: some CPU")
  assert text.startswith("machine: some CPU\n")
  assert "nan" not in text and "| 5% | - |" in text


def test_model_line_names_the_layout(tiny_bert_dir):
  assert bench.model_line(tiny_bert_dir).endswith("(2 layers, hidden 32, 4 heads, vocab 128)")


@pytest.mark.parametrize(
  "change, message",
  [
    ({"methods": ["summed", "bogus"]}, "unknown multi-task gradient method 'bogus'"),
    ({"modes": ["lora", "bogus"]}, "config.adapter.kind: 'bogus'"),
    ({"steps": 0}, "--steps must be >= 1"),
    ({"length": 65}, "--length=65 is above the max_position_embeddings=64"),
    ({"seqs_per_task": 3}, "config.train.seqs_per_task"),
    ({"model_path": "/no/such/model"}, "'/no/such/model' does not exist"),
  ],
)
def test_bad_arguments_stop_the_bench_before_any_configuration_runs(tiny_bert_dir, change, message):
  from absl import app

  args = dict(methods=["summed", "pcgrad"], modes=["lora"], seqs_per_task=4, length=16, steps=1)
  args["model_path"] = tiny_bert_dir
  bench.check_arguments(**args)
  with pytest.raises(app.UsageError, match=message):
    bench.check_arguments(**{**args, **change})


def test_task_specific_top_is_checked_before_any_configuration_runs(tiny_bert_dir):
  with pytest.raises(bench.app.UsageError, match="adapter.task_specific_top"):
    bench.check_arguments(["sum"], ["full"], 4, 16, 2, tiny_bert_dir, task_specific_top=3)
  bench.check_arguments(["sum"], ["full"], 4, 16, 2, tiny_bert_dir, task_specific_top=2)
  assert bench.bench_config("sum", "lora", 4, tiny_bert_dir, 1).adapter.task_specific_top == 1


def test_repeated_tasks_copy_the_cs224n_declarations_in_turn():
  config = bench.bench_config("sum", "lora", 4, None, num_tasks=7)
  assert config.task_order == ("sst", "quora", "sts", "sst_2", "quora_2", "sts_2", "sst_3")
  for name in config.task_order:
    base = name.split("_")[0]
    copy = {k: v for k, v in config.tasks[name].items() if k != "prediction_prefix"}
    assert copy == {k: v for k, v in config.tasks[base].items() if k != "prediction_prefix"}
  assert bench.bench_config("sum", "lora", 4, None, num_tasks=2).task_order == ("sst", "quora")


def test_more_tasks_give_a_bigger_step_with_each_tasks_examples(tiny_bert_dir):
  rows = {
    t: bench.run_one("pcgrad", "lora", 4, 16, 1, model_path=tiny_bert_dir, num_tasks=t)
    for t in (3, 5)
  }
  # 5 tasks: sst, quora, sts, sst_2, quora_2; a bi-encoded pair is 2 of the 4 sequences.
  assert rows[5]["tasks"] == 5 and rows[3]["tasks"] == 3
  assert rows[5]["examples_per_s"] == pytest.approx((4 + 2 + 2 + 4 + 2) / rows[5]["step_s"])
  assert rows[5]["flops_per_step"] > rows[3]["flops_per_step"]
  assert rows[5]["trainable"] > rows[3]["trainable"]  # Two more heads.


def test_task_scaling_table_reads_each_row_against_the_summed_step_at_its_t(tmp_path):
  from benchmarks import task_scaling

  def row(method, t, step_s):
    return {
      "method": method,
      "tasks": t,
      "step_s": step_s,
      "flops_per_step": 2e9,
      "peak_rss_mib": 900,
    }

  rows = [
    row("pcgrad", 4, 3.0),
    row("summed", 2, 0.5),
    row("summed", 4, 2.0),
    row("pcgrad", 2, 1.0),
  ]
  lines = task_scaling.table(rows).splitlines()[2:]
  # Sorted by method (summed first), then T; per task = step / T; vs summed at the same T.
  assert [line.split(" | ")[:5] for line in lines] == [
    ["| summed", "2", "0.500", "0.250", "1.00x"],
    ["| summed", "4", "2.000", "0.500", "1.00x"],
    ["| pcgrad", "2", "1.000", "0.500", "2.00x"],
    ["| pcgrad", "4", "3.000", "0.750", "1.50x"],
  ]
  # By T: a column per T ("-" where a method lacks it), the slope of step time in T
  # (pcgrad: 1.0 s at T=2, 3.0 at T=4: 1.0 s per task) and peak RSS at the ends.
  by_t = task_scaling.by_t_table([*rows, row("pcgrad", 3, 2.0)]).splitlines()
  assert by_t[0] == "| method | T=2 s | T=3 s | T=4 s | s per added task | peak RSS MiB |"
  assert by_t[2:] == [
    "| summed | 0.50 | - | 2.00 | 0.750 | 900 → 900 |",
    "| pcgrad | 1.00 | 2.00 | 3.00 | 1.000 | 900 → 900 |",
  ]
  task_scaling.plot(rows, str(tmp_path / "p.png"), "machine")
  assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_configuration_in_its_own_process_gives_its_row_or_none(tiny_bert_dir, capsys):
  flag_values = dict(seqs_per_task=4, length=16, steps=1, model=tiny_bert_dir)
  row = bench.run_in_process("sum", "lora", tasks=2, **flag_values)
  assert (row["method"], row["mode"], row["tasks"]) == ("sum", "lora", 2)
  assert bench.run_in_process("no_such_method", "lora", **flag_values) is None
  assert "no_such_method:lora" in capsys.readouterr().err
