"""Variants of the train step, timed alternately in one process (so background load
affects every variant alike). BENCHMARKS.md, "Where the time goes".

  python -m benchmarks.compare_step lora|full [--variants xla|gelu|encoder|gram|blas] [--rounds 4]
      [--base REV]   (from the repo root)

`xla`: the step compiled with different XLA:CPU options (YNNPACK fusions: all, individual
matmuls only, none as the trainer compiles, reductions only).
`gelu`: BERT's exact GELU through erfc (`jax.nn.gelu(approximate=False)`) or through erf
(mtl_jax.models.gelu), each compiled with the trainer's XLA options.
`encoder`: the checkout's Flax BERT (mtl_jax/models/bert.py) against that file at git
revision --base (e.g. `2c09f1c`, before the token-major hidden states), the rest of the
step the same.
`blas`: full fine-tuning's dense-layer matmuls (forward, input and weight gradients) as
XLA's dot (the trainer), through numpy's BLAS by `jax.pure_callback`, or through scipy's
OpenBLAS by an XLA FFI custom call (benchmarks/sgemm_ffi.cc, built here with g++):
prototypes of calling a BLAS from the step (BENCHMARKS.md, sixth and seventh sessions).
`gram`: the methods' T x T Gram matrix as one [T, D] x [D, T] dot per leaf (before
2026-12-01, fifth session) or as the checkout computes it (`mtl_jax.grad._tree.gram`).
Every variant runs with huge pages, as the trainer does (mtl_jax/hugepages.py). That fix
itself needs a fresh process per variant: compare
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0 python -m mtl_jax.bench ...` with the default.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import gram_accuracy
from configs import default
from mtl_jax import hugepages, machine, train, xla_options
from mtl_jax.bench import random_batch
from mtl_jax.grad import _tree
from mtl_jax.models import adapters, bert, gelu, multitask
from mtl_jax.step import make_train_step

XLA_VARIANTS = {
  "default XLA": {},
  "YNNPACK individual dots only": {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  },
  "no YNNPACK fusions": {"xla_cpu_experimental_ynn_fusion_type": ""},
  "YNNPACK reductions only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
}
GELU_VARIANTS = {
  "GELU via erfc": lambda x: jax.nn.gelu(x, approximate=False),
  "GELU via erf (ours)": gelu.exact_gelu,
}

GRAM_VARIANTS = {
  "Gram as one dot per leaf": gram_accuracy.one_dot,
  "Gram blocked (checkout)": _tree.gram,
}


def _host_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b computed by numpy (its bundled OpenBLAS), called from inside the compiled step."""
  shape = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
  out = jax.ShapeDtypeStruct(shape, a.dtype)
  return jax.pure_callback(np.matmul, out, a, b, vmap_method="broadcast_all")


@jax.custom_vjp
def _blas_dot(x, w):
  return _host_matmul(x, w)


def _blas_dot_bwd(residuals, g):
  x, w = residuals  # x [tokens, in], g [tokens, out]; the task axis is vmap's.
  return _host_matmul(g, w.T), _host_matmul(x.T, g)


_blas_dot.defvjp(lambda x, w: (_host_matmul(x, w), (x, w)), _blas_dot_bwd)


@functools.cache
def _register_ffi_sgemm() -> None:
  """Builds benchmarks/sgemm_ffi.cc, hands it scipy's sgemm and registers it with XLA."""
  import scipy.linalg.cython_blas

  here = os.path.dirname(os.path.abspath(__file__))
  library = os.path.join(tempfile.mkdtemp(), "sgemm_ffi.so")
  subprocess.run(
    ["g++", "-O2", "-shared", "-fPIC", "-std=c++17", "-w", f"-I{jax.ffi.include_dir()}"]
    + [os.path.join(here, "sgemm_ffi.cc"), "-o", library, "-ldl"],
    check=True,
  )
  lib = ctypes.cdll.LoadLibrary(library)
  capsule = scipy.linalg.cython_blas.__pyx_capi__["sgemm"]
  ctypes.pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
  ctypes.pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
  ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
  ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
  name = ctypes.pythonapi.PyCapsule_GetName(capsule)
  lib.mtl_set_sgemm.argtypes = [ctypes.c_void_p]
  if not lib.mtl_set_sgemm(ctypes.pythonapi.PyCapsule_GetPointer(capsule, name)):
    sys.exit("scipy's BLAS has no openblas_set_num_threads_local: the prototype needs OpenBLAS")
  jax.ffi.register_ffi_target("mtl_sgemm", jax.ffi.pycapsule(lib.MtlSgemm), platform="cpu")


def _ffi_matmul(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False):
  """op(a) @ op(b) by the FFI handler; vmap adds size-1 leading axes the handler broadcasts."""
  _register_ffi_sgemm()
  m = a.shape[-1] if trans_a else a.shape[-2]
  n = b.shape[-2] if trans_b else b.shape[-1]
  shape = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n)
  call = jax.ffi.ffi_call(
    "mtl_sgemm", jax.ShapeDtypeStruct(shape, a.dtype), vmap_method="expand_dims"
  )
  return call(a, b, trans_a=np.bool_(trans_a), trans_b=np.bool_(trans_b))


@jax.custom_vjp
def _ffi_dot(x, w):
  return _ffi_matmul(x, w)


def _ffi_dot_bwd(residuals, g):
  x, w = residuals
  return _ffi_matmul(g, w, trans_b=True), _ffi_matmul(x, g, trans_a=True)


_ffi_dot.defvjp(lambda x, w: (_ffi_matmul(x, w), (x, w)), _ffi_dot_bwd)


def dense_with(dot):
  """A dense layer without adapter (full fine-tuning) whose three matmuls run in `dot`."""

  class Dense(adapters.AdaptedDense):
    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
      kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
      bias = self.param("bias", nn.initializers.zeros, (self.features,))
      return dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)

  return Dense


DENSE_VARIANTS = {
  "XLA dot (trainer)": adapters.AdaptedDense,
  "numpy BLAS via pure_callback": dense_with(_blas_dot),
  "OpenBLAS via XLA FFI": dense_with(_ffi_dot),
}


# --variants: (module, the name in it that the step looks up when traced, its values).
PATCHED_NAMES = {
  "blas": (bert, "AdaptedDense", DENSE_VARIANTS),  # bert.dense looks the class up.
  "gram": (_tree, "gram", GRAM_VARIANTS),  # gram_tree looks the function up.
  "gelu": (bert, "exact_gelu", GELU_VARIANTS),  # The encoder looks the function up.
}


def compile_step(mode: str, options: dict):
  """The PCGrad step on the bench's shapes (3 tasks x 64 sequences x 64 tokens)."""
  config = default.get_config()
  config.adapter.kind = mode
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(config)
  batch = random_batch(3, 64, 64, model.config.vocab_size)
  step = jax.jit(make_train_step(model, tx, (0, 1, 2), 0))
  return step.lower(state, frozen, batch).compile(compiler_options=options), state, frozen, batch


def encoder_at(rev: str):
  """BertEncoder as mtl_jax/models/bert.py defines it at git revision `rev`."""
  source = subprocess.run(
    ["git", "show", f"{rev}:mtl_jax/models/bert.py"], capture_output=True, text=True, check=True
  ).stdout
  path = os.path.join(tempfile.mkdtemp(), "bert_at_rev.py")
  with open(path, "w") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("bert_at_rev", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclasses look their module up.
  spec.loader.exec_module(module)
  return module.BertEncoder


def main() -> None:
  hugepages.reexec_with_huge_pages()  # As the trainer runs (mtl_jax/hugepages.py).
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=["lora", "full"])
  parser.add_argument(
    "--variants", choices=["xla", "gelu", "encoder", "gram", "blas"], default="xla"
  )
  parser.add_argument("--base", default="2c09f1c", help="git revision for --variants=encoder")
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  if args.variants == "blas" and args.mode != "full":
    parser.error("--variants blas replaces dense layers without adapters: mode full only")
  compiled = {}
  if args.variants == "xla":
    for name, options in XLA_VARIANTS.items():
      compiled[name] = compile_step(args.mode, options)
  else:  # The trainer's options; a name the step looks up when traced takes each value.
    if args.variants == "encoder":  # MultitaskModel.setup looks the class up.
      module, attribute = multitask, "BertEncoder"
      variants = {f"bert.py at {args.base}": encoder_at(args.base), "checkout": bert.BertEncoder}
    else:
      module, attribute, variants = PATCHED_NAMES[args.variants]
    for name, value in variants.items():
      setattr(module, attribute, value)
      compiled[name] = compile_step(args.mode, xla_options.train_step_options() or {})
  times = {name: [] for name in compiled}
  cpu_start = machine.cpu_times()
  losses = {}
  for _ in range(args.rounds + 1):  # The first round warms up.
    for name, (fn, state, frozen, batch) in compiled.items():
      start = time.perf_counter()
      _, metrics = fn(state, frozen, batch)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - start)
      losses[name] = float(metrics["loss"])
  for name in compiled:
    print(
      f"{args.mode:5s} {name:30s} median {np.median(times[name][1:]):.2f} s  "
      f"loss {losses[name]:.7f}  rounds: {' '.join(f'{t:.2f}' for t in times[name][1:])}"
    )
  print(machine.steal_line(cpu_start, machine.cpu_times()))


if __name__ == "__main__":
  main()
