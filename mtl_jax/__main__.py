"""`python -m mtl_jax TOOL [flags]`, installed as the `mtl-jax` console script.

mtl-jax train --config=configs/pcgrad.py --workdir=runs/x   # as `python main.py ...`
mtl-jax predict --workdir=runs/x --task=sst --input=in.txt --output=out.csv
mtl-jax {predict,embed,export,diagnose,recon,bench,sweep,ledger} --help
"""

from __future__ import annotations

import runpy
import sys

TOOLS = {
  "train": "mtl_jax.tools.train_cli",
  "predict": "mtl_jax.tools.predict",
  "embed": "mtl_jax.tools.embed",
  "export": "mtl_jax.tools.export",
  "diagnose": "mtl_jax.tools.diagnose",
  "recon": "mtl_jax.tools.recon",
  "bench": "mtl_jax.tools.bench",
  "sweep": "mtl_jax.study.sweep",
  "ledger": "mtl_jax.study.publish",
}


def main() -> None:
  usage = f"usage: mtl-jax {{{','.join(TOOLS)}}} [flags]"
  if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
    print(f"{usage}\n\n{__doc__.strip()}")  # Asked for: stdout, exit status 0.
    return
  if len(sys.argv) < 2 or sys.argv[1] not in TOOLS:
    sys.exit(f"{usage} (got {sys.argv[1]!r})" if len(sys.argv) > 1 else usage)
  tool = sys.argv.pop(1)
  sys.argv[0] = f"mtl-jax {tool}"
  if tool == "train":
    from mtl_jax.runtime import hugepages

    hugepages.reexec_with_huge_pages()  # Before the trainer's imports (main.py says why).
    from mtl_jax.tools import train_cli

    train_cli.run()
  else:
    runpy.run_module(TOOLS[tool], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
