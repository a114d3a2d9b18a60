"""`python -m mtl_jax.recon` runs mtl_jax/tools/recon.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.recon", run_name="__main__", alter_sys=True)
