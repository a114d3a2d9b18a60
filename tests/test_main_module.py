"""`python -m mtl_jax TOOL` / `mtl-jax TOOL` (mtl_jax/__main__.py): help and a bad tool."""

from __future__ import annotations

import pytest

from mtl_jax import __main__ as entry


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_tools_on_stdout_and_exits_0(monkeypatch, capsys, flag):
  monkeypatch.setattr("sys.argv", ["mtl-jax", flag])
  entry.main()
  out = capsys.readouterr().out
  assert out.startswith("usage: mtl-jax {train,predict,") and "mtl-jax train" in out


@pytest.mark.parametrize("argv, got", [(["mtl-jax"], ""), (["mtl-jax", "trian"], " (got 'trian')")])
def test_no_or_an_unknown_tool_is_a_usage_error(monkeypatch, argv, got):
  monkeypatch.setattr("sys.argv", argv)
  with pytest.raises(SystemExit) as e:
    entry.main()
  assert str(e.value).startswith("usage: mtl-jax {") and str(e.value).endswith(f"[flags]{got}")
