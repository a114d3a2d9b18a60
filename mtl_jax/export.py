"""`python -m mtl_jax.export` runs mtl_jax/tools/export.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.export", run_name="__main__", alter_sys=True)
