"""`python -m mtl_jax.bench` runs mtl_jax/tools/bench.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.bench", run_name="__main__", alter_sys=True)
