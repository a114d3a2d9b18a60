"""`python -m mtl_jax.sweep` runs mtl_jax/study/sweep.py, where the code lives."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.study.sweep", run_name="__main__", alter_sys=True)
