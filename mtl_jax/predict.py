"""`python -m mtl_jax.predict` runs mtl_jax/tools/predict.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.tools.predict", run_name="__main__", alter_sys=True)
