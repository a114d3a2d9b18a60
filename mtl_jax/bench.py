"""`python -m mtl_jax.bench`: an alias of `python -m mtl_jax.tools.bench` (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.bench", run_name="__main__", alter_sys=True)
