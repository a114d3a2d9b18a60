"""`python -m mtl_jax.ledger`: runs mtl_jax/study/publish.py (the code lives there)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("mtl_jax.study.publish", run_name="__main__", alter_sys=True)
