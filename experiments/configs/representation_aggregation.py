"""Gradient methods on the gradients of the shared representation (the cheap variant).

  python -m mtl_jax.train \
      --config experiments/configs/representation_aggregation.py:mgda --workdir W

Per-task gradients are taken with respect to the encoder's outputs that the heads read, and
the method's combined gradient goes back through the encoder in one backward pass. MGDA in
this mode is MGDA-UB (Sener & Koltun 2018). Variants: the methods of gradient_aggregation.py.
"""

from experiments.configs import default, gradient_aggregation


def get_config(variant: str = 'mgda'):
  if variant not in gradient_aggregation.METHODS:
    raise ValueError(f'Unknown variant {variant!r} of representation_aggregation.py; known: '
                     f'{gradient_aggregation.METHODS}.')
  return default.method_config(variant, 'representation', diagnostics=True)
