"""JAX's persistent compilation cache, on by default for the command-line tools.

Every run compiles its train step once per row shape, and on a CPU that is a large part of
a short run; a sweep pays it again for every run. XLA's compiled executables are keyed by the
program, the compiler options and the jax/jaxlib version, so a second identical run loads
them from disk instead. The program includes the run's seed (its dropout keys, and a
gradient method's own key, are constants of the step), so a run at another seed compiles
its train step again; evaluation's predict functions are shared by every run of a model.

Where the cache lives, in order:
  `MTL_JAX_COMPILATION_CACHE=off` (or 0, false, no)  no cache;
  `JAX_COMPILATION_CACHE_DIR=DIR`                   JAX's own variable, honoured as it is;
  `MTL_JAX_COMPILATION_CACHE=DIR`                   that directory;
  otherwise                                         `$XDG_CACHE_HOME/mtl_jax/xla` (~/.cache/...).
A CPU job of several processes (jax.distributed over gloo) runs without it.
"""

from __future__ import annotations

import os

import jax

_OFF = ("off", "0", "false", "no", "")


def cache_dir(environ: os._Environ | dict | None = None) -> str | None:
  """The directory the cache should use, or None when it is turned off."""
  env = os.environ if environ is None else environ
  setting = env.get("MTL_JAX_COMPILATION_CACHE")
  if setting is not None and setting.strip().lower() in _OFF:
    return None
  if env.get("JAX_COMPILATION_CACHE_DIR"):
    return env["JAX_COMPILATION_CACHE_DIR"]
  if setting:
    return os.path.expanduser(setting)
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mtl_jax", "xla")


def enable() -> str | None:
  """Points JAX's persistent cache at cache_dir(); call before the first compilation.

  Every executable that took at least a second to compile is kept (JAX's default threshold:
  the small eager ops are not worth a file). Returns the directory, or None when off.
  """
  path = cache_dir()
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # Gloo gives the first cross-process collective 30 s: processes that find different
    # entries in the cache would reach it minutes apart.
    path = None
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:  # A read-only home must not stop a run: it only compiles again.
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  return path
