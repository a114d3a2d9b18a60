"""`python -m mtl_jax.diagnose` runs mtl_jax/tools/diagnose.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.diagnose", run_name="__main__", alter_sys=True)
