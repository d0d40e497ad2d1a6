"""MTL on the built-in suite with a dynamic loss weighter (one backward pass per step).

  python -m mtl_jax.train --config experiments/configs/loss_weighting.py:uncertainty --workdir W

The variant names the method: a module of mtl_jax/weighting/ whose needs are LOSSES (dwa,
equal, famo, gls, rlw, uncertainty), less static, whose weights are config.task_weights
(default.py). Method arguments: --config.weighting.args.NAME=...
"""

from experiments.configs import default
from mtl_jax import weighting

METHODS = tuple(n for n in weighting.names()
                if weighting.needs(n) is weighting.Needs.LOSSES and n != 'static')


def get_config(variant: str = 'uncertainty'):
  if variant not in METHODS:
    raise ValueError(f'Unknown variant {variant!r} of loss_weighting.py; known: {METHODS}.')
  return default.method_config(variant, 'params', diagnostics=False)
