"""The train step and the predict function lower for GPU and TPU, with no GPU or TPU here.

`jax.export` lowers for platforms that are not present and refuses custom calls that are not
guaranteed on the target platform; on top of that the StableHLO text is searched for
CPU-only constructs (LAPACK / host-callback custom calls, CPU compiler options). What this
does not check: that XLA:GPU / XLA:TPU compile and run the module (no device here), nor
its speed or memory there. The CPU-only settings (XLA options, huge pages) are applied only
on CPU."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.evaluate import make_predict_fn
from mtl_jax.models import multitask
from mtl_jax.runtime import hugepages, xla_options
from mtl_jax.step import make_train_step
from mtl_jax.tools import bench

PLATFORMS = ("cuda", "tpu")
# Custom calls that exist only in XLA:CPU (LAPACK and DUCC kernels, host callbacks).
CPU_ONLY = re.compile(r"lapack|ducc|cpu_callback|xla_python_cpu|ynn|onednn|__cpu")


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _custom_calls(exported) -> set[str]:
  """The custom-call targets of the exported StableHLO (both spellings of the op)."""
  pattern = r'stablehlo\.custom_call @([\w.$-]+)|call_target_name = "([^"]+)"'
  return {a or b for a, b in re.findall(pattern, exported.mlir_module())}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_train_step_and_predict_export_for_cuda_and_tpu(tiny_bert_dir, mode, dtype):
  config = default.get_config()
  config.model.path = tiny_bert_dir
  config.model.max_length = 64  # The tiny model's positions.
  config.model.dtype = dtype
  config.adapter.kind = mode
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(run_spec.build(config))
  batch = bench.random_batch(3, 8, 16, model.config.vocab_size)
  # As the trainer jits it (the CPU compiler options are compile-time, not in the module).
  step = jax.jit(
    make_train_step(model, tx, (0, 1, 2), 0),
    donate_argnums=(0,),
    compiler_options=xla_options.train_step_options(),
  )
  # With the trainer's traced statistics flag (a lax.cond in the step).
  exported_step = jax.export.export(step, platforms=PLATFORMS)(
    _abstract(state), _abstract(frozen), _abstract(batch), jax.ShapeDtypeStruct((), np.bool_)
  )
  params = multitask.merge(state.trainable, frozen)
  eval_batch = {
    k: v[0] for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
  }
  exported_predict = jax.export.export(make_predict_fn(model), platforms=PLATFORMS)(
    _abstract(params), _abstract(eval_batch), jax.ShapeDtypeStruct((), np.int32)
  )

  for exported in (exported_step, exported_predict):
    assert exported.platforms == PLATFORMS
    text = exported.mlir_module()
    assert not [c for c in _custom_calls(exported) if CPU_ONLY.search(c.lower())]
    assert "xla_cpu" not in text
    if dtype == "bfloat16":  # The matmuls really are bf16 on the accelerator.
      assert re.search(r"stablehlo\.dot_general.*bf16", text)
  # The exported step has the trainer's signature: (state, metrics) out for (state, frozen,
  # batch, statistics).
  assert len(exported_step.out_avals) == len(
    jax.tree.leaves(jax.eval_shape(step, state, frozen, batch))
  )


def test_the_cpu_only_check_sees_a_cpu_only_custom_call():
  """An eigendecomposition lowered for the CPU calls LAPACK: the check above would fail."""
  exported = jax.export.export(jax.jit(jax.numpy.linalg.eigh), platforms=("cpu",))(
    jax.ShapeDtypeStruct((4, 4), np.float32)
  )
  assert [c for c in _custom_calls(exported) if CPU_ONLY.search(c.lower())]


def test_cpu_only_settings_apply_only_on_cpu(monkeypatch):
  xla_options.train_step_options.cache_clear()
  try:
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert xla_options.train_step_options() is None
    xla_options.train_step_options.cache_clear()
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert xla_options.train_step_options() is None
  finally:
    xla_options.train_step_options.cache_clear()
  monkeypatch.undo()
  assert xla_options.train_step_options() is not None  # This machine: CPU.


@pytest.mark.parametrize(
  "environ, plugins, cpu",
  [
    ({}, [], True),
    ({"JAX_PLATFORMS": "cpu"}, ["jax-cuda12-plugin"], True),  # Forced onto the CPU.
    ({"JAX_PLATFORMS": "cuda"}, [], False),
    ({"JAX_PLATFORMS": "tpu,cpu"}, [], False),
    ({}, ["jax-cuda12-plugin"], False),
    ({}, ["libtpu"], False),
    ({}, ["jax-rocm60-plugin"], False),
  ],
)
def test_huge_pages_only_when_jax_will_run_on_the_cpu(environ, plugins, cpu):
  assert hugepages.backend_is_cpu(environ, plugins) == cpu
  madvise = "always [madvise] never\n"
  env = hugepages.environment_with_huge_pages(
    environ, madvise, "glibc", hugepages.backend_is_cpu(environ, plugins)
  )
  assert (env is not None) == cpu
