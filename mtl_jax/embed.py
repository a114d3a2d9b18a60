"""`python -m mtl_jax.embed`: an alias of `python -m mtl_jax.tools.embed` (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.embed", run_name="__main__", alter_sys=True)
