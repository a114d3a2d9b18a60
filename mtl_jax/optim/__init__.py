"""What the optimizer does after the tasks' gradients combine, beyond clipping and AdamW.

Modules, each one optax transform appended to the chain built by
`mtl_jax.config.run_spec.RunSpec.optimizer` (after AdamW, so nothing runs when they are off):

* `lr_groups`: learning rates per parameter group (train.head_lr_multiplier,
  train.layer_lr_decay): a static multiplier per leaf, applied to AdamW's update.
* `averaging`: an exponential moving average of the trained parameters (train.ema_decay),
  kept in the optimizer state, evaluated in place of the raw parameters.
"""
