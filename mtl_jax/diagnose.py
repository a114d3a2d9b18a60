"""`python -m mtl_jax.diagnose`: an alias of `python -m mtl_jax.tools.diagnose` (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.diagnose", run_name="__main__", alter_sys=True)
