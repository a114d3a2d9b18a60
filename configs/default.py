"""Default: the bundled all-MiniLM-L6-v2 + LoRA (query, value; r=8, alpha=16), summed loss.

Run:   python main.py --config=configs/default.py --workdir=runs/default
Tweak: --config.train.steps=50  --config.data_dir=PATH  --config.model.path=DIR
Every key and its default lives in mtl_jax/config/defaults.py (inside the package, so a
pip-installed mtl_jax reads old runs' configs without this checkout); this file is that.
"""

from mtl_jax.config.defaults import get_config  # noqa: F401
