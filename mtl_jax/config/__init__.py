"""The config boundary: a run's ConfigDict in, a checked, built run specification out.

defaults.py  today's schema and default values (`configs/*.py` start from it)
loader.py    a --config file and `--config.grad.kwargs.*` from the command line
run_spec.py  validation and the objects the code takes (model spec, schedule, optimizer)
upgrade.py   a run's saved config.json brought to today's schema
resume.py    which config changes a workdir's checkpoints refuse
"""


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""
