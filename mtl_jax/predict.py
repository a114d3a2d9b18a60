"""`python -m mtl_jax.predict`: an alias of `python -m mtl_jax.tools.predict` (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.predict", run_name="__main__", alter_sys=True)
