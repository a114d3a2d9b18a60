"""`python -m mtl_jax.sweep`: an alias of `python -m mtl_jax.study.sweep` (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.study.sweep", run_name="__main__", alter_sys=True)
