"""MTL on the built-in suite with a gradient method on the shared parameters' gradients.

  python -m mtl_jax.train --config experiments/configs/gradient_aggregation.py:pcgrad --workdir W

The variant names the method: mgda, cagrad, imtl, nash_mtl, pcgrad, gradvac, graddrop,
aligned_mtl, gradnorm, db_mtl. Per-task gradients are taken with respect to the encoder's
parameters (weighting.mode='params'); see representation_aggregation.py for the cheap mode.
"""

from experiments.configs import default

METHODS = ('mgda', 'cagrad', 'imtl', 'nash_mtl', 'pcgrad', 'gradvac', 'graddrop',
           'aligned_mtl', 'gradnorm', 'db_mtl')


def get_config(variant: str = 'pcgrad'):
  if variant not in METHODS:
    raise ValueError(f'Unknown variant {variant!r} of gradient_aggregation.py; known: {METHODS}.')
  return default.method_config(variant, 'params', diagnostics=True)
