"""Every config file the repository ships (configs/**/*.py) loads as main.py loads it and
passes the run's checks, so a config a README or docs page names cannot rot unseen; and
configs/best.py is the recipe study's r3 rung with the recipe's number of steps."""

from __future__ import annotations

import pathlib

import pytest
from flax import traverse_util

from mtl_jax.config import run_spec
from mtl_jax.study import sweep

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(p for p in CONFIGS.rglob("*.py") if p.name != "__init__.py")


def _flat(config) -> dict:
  return traverse_util.flatten_dict(config.to_dict(), sep=".")


def test_the_repository_ships_config_files():
  names = {p.relative_to(CONFIGS).as_posix() for p in FILES}
  assert {"default.py", "pcgrad.py", "best.py", "recipe/r0_default.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_config_file_loads_and_passes_the_run_checks(path):
  run_spec.build(sweep.load_config(str(path), ()))


def test_best_is_the_quora_cross_rung_trained_longer():
  best = _flat(sweep.load_config(str(CONFIGS / "best.py"), ()))
  rung = _flat(sweep.load_config(str(CONFIGS / "recipe" / "r3_quora_cross.py"), ()))
  differ = {
    k: (rung.get(k), best.get(k)) for k in best.keys() | rung.keys() if best.get(k) != rung.get(k)
  }
  assert differ == {"train.steps": (300, 800)}
