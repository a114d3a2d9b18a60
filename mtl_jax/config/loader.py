"""Loading a --config file and the gradient method's keyword arguments from a command line.

Errors are one line naming the file or key: ml_collections would otherwise answer a
missing file with two chained tracebacks and an unknown grad kwarg as an unknown key.
"""

from __future__ import annotations

import ast
import glob
import os

import ml_collections

from mtl_jax.config import ConfigError


def unknown_key_message(error: BaseException) -> str:
  """The message, on one line, of ml_collections' error for an unknown key in a config
  override (an AttributeError wrapping a KeyError wrapping "'stepz'\nDid you mean...")."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0] if error.args else error).replace("\n", " ")


def config_file_problem(path: str) -> str | None:
  """What is wrong with a --config file, on one line (None if it compiles).

  Checked before ml_collections loads it, which would otherwise answer a missing file with
  two chained tracebacks and a syntax error with one. `path` may end in ':ARG' (passed to
  get_config by ml_collections)."""
  if not os.path.isfile(path) and ":" in path and os.path.isfile(path.split(":", 1)[0]):
    path = path.split(":", 1)[0]
  if not os.path.isfile(path):
    near = sorted(
      p
      for p in glob.glob(os.path.join(os.path.dirname(path) or ".", "*.py"))
      if not p.endswith("__init__.py")
    )
    hint = f" (that directory has {', '.join(near[:8])})" if near else ""
    return f"config file {path} not found{hint}: give --config=<an existing configs/*.py file>"
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
  except SyntaxError as e:
    return f"{path}, line {e.lineno}: syntax error ({e.msg}): fix the config file"
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return f"cannot read config file {path}: {e}"
  if "get_config" not in _top_level_names(tree):
    return (
      f"config file {path} defines no get_config(): a config file returns its ConfigDict from one"
    )
  return None


def _top_level_names(tree: ast.Module) -> set[str]:
  """Names a module binds at its top level: functions, classes, assignments, imports."""
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
  return names


_GRAD_KWARG = "config.grad.kwargs."


def take_grad_kwargs(argv: list[str]) -> tuple[list[str], dict]:
  """Splits `--config.grad.kwargs.NAME=VALUE` off a command line: (the rest, {NAME: VALUE}).

  A method's arguments are not keys of the config file (grad.kwargs is empty there, and
  locked), so ml_collections would refuse them as unknown keys; `set_grad_kwargs` adds
  them, and `grad_method` refuses a name the method does not take. VALUE is read as a
  Python literal (0.4, (4, 1, 10), True), else kept as a string (mean)."""
  rest, kwargs = [], {}
  for arg in argv:
    name, equals, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and name.startswith(_GRAD_KWARG) and equals:
      try:
        kwargs[name[len(_GRAD_KWARG) :]] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        kwargs[name[len(_GRAD_KWARG) :]] = value
    else:
      rest.append(arg)
  return rest, kwargs


def loaded_config(value, path: str, grad_kwargs: dict) -> ml_collections.ConfigDict:
  """What a --config file's get_config() returned (None if it returned None), checked to be
  a ConfigDict, with the command line's grad kwargs added (take_grad_kwargs): main.py and
  the sweep load config files the same way."""
  if not isinstance(value, ml_collections.ConfigDict):
    raise ConfigError(
      f"config file {path}: get_config() returned {type(value).__name__}, "
      "not an ml_collections.ConfigDict"
    )
  set_grad_kwargs(value, grad_kwargs)
  return value


def set_grad_kwargs(config: ml_collections.ConfigDict, kwargs: dict) -> None:
  """config.grad.kwargs.NAME = VALUE for each of `kwargs` (take_grad_kwargs), new or not."""
  for name, value in kwargs.items():
    try:
      with config.unlocked():
        config.grad.kwargs[name] = value
    except (TypeError, ValueError, KeyError) as e:
      raise ConfigError(f"config.grad.kwargs.{name}={value!r}: {e}") from None
