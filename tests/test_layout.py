"""The package's shape: no import cycles (function-level imports included), no sys.path
edits, and README's "Where things live" names the home of every module."""

from __future__ import annotations

import ast
import os
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mtl_jax"
README = PACKAGE.parent / "README.md"


def _modules() -> dict[str, pathlib.Path]:
  """{dotted name: file} of every module of mtl_jax (a package is its __init__)."""
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """Module -> the mtl_jax modules it imports anywhere in its body. `from P import X` is
  an edge to P.X when X is a module, else to P (X is defined in P's __init__)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        edges.update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
        for a in node.names:  # A submodule, else a name defined by the package's __init__.
          sub = f"{node.module}.{a.name}"
          edges.add(sub if sub in modules else node.module)
    # A package's __init__ runs when any of its modules is imported: not an edge to follow
    # from the module itself to its own package.
    graph[name] = {e for e in edges if e in modules and e != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as a list of its nodes (first == last), or None."""
  state: dict[str, int] = {}  # 1: on the stack, 2: done.
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_find_cycle_finds_one_and_only_one():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert "mtl_jax.train" in graph and "mtl_jax.config.run_spec" in graph["mtl_jax.train"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_package_never_edits_sys_path():
  for name, path in _modules().items():
    assert "sys.path" not in path.read_text(), f"{name} edits sys.path"


@pytest.mark.parametrize("name", sorted(set(_modules()) - {"mtl_jax"}))
def test_readme_names_the_home_of_every_module(name):
  """Each module's home is named in README ("Where things live"): its folder (whose
  __init__ docstring lists its modules), or, at the top of the package, its file."""
  text = README.read_text()
  section = text[text.index("## Where things live") :]
  rel = os.path.relpath(_modules()[name], PACKAGE.parent)
  folder = os.path.dirname(rel) + "/"
  stem = os.path.splitext(os.path.basename(rel))[0]
  aliases = re.search(r"`mtl_jax/\{([\w,]+)\}\.py`", section)
  named = (
    rel in section
    or (folder != "mtl_jax/" and f"`{folder}`" in section)
    or (folder == "mtl_jax/" and aliases is not None and stem in aliases.group(1).split(","))
  )
  assert named, f"README's 'Where things live' does not name {rel}"
