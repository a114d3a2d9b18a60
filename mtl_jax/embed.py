"""`python -m mtl_jax.embed` runs mtl_jax/tools/embed.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.embed", run_name="__main__", alter_sys=True)
