"""`python -m mtl_jax.export`: an alias of `python -m mtl_jax.tools.export` (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.export", run_name="__main__", alter_sys=True)
