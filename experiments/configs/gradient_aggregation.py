"""MTL on the built-in suite with a gradient method on the shared parameters' gradients.

  python -m mtl_jax.train --config experiments/configs/gradient_aggregation.py:pcgrad --workdir W

The variant names the method: a module of mtl_jax/weighting/ that reads per-task gradients or
their Gram matrix (aligned_mtl, cagrad, db_mtl, graddrop, gradnorm, gradvac, imtl, mgda,
nash_mtl, pcgrad). Per-task gradients are taken with respect to the encoder's
parameters (weighting.mode='params'); see representation_aggregation.py for the cheap mode.
"""

from experiments.configs import default
from mtl_jax import weighting

METHODS = tuple(n for n in weighting.names() if weighting.needs(n) is not weighting.Needs.LOSSES)


def get_config(variant: str = 'pcgrad'):
  if variant not in METHODS:
    raise ValueError(f'Unknown variant {variant!r} of gradient_aggregation.py; known: {METHODS}.')
  return default.method_config(variant, 'params', diagnostics=True)
