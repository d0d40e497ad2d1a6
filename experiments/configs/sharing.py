"""MTL on the built-in suite with one sharing architecture (docs/sharing.md).

  python -m mtl_jax.train --config experiments/configs/sharing.py:shared_private --workdir W

The variant names the architecture (a key of mtl_jax.models.architectures.ARCHITECTURES), or
'asp_mtl': shared-private with the adversary (Liu, Qiu & Huang 2017). Architecture fields:
--config.model.args.FIELD=...; the adversary's: --config.adversary.FIELD=...
"""

from experiments.configs import default
from mtl_jax.models import architectures


def get_config(variant: str = 'shared_private'):
  names = (*architectures.ARCHITECTURES, 'asp_mtl')
  if variant not in names:
    raise ValueError(f'Unknown variant {variant!r} of sharing.py; known: {names}.')
  c = default.get_config()
  c.mode = 'multi'
  c.model.architecture = 'shared_private' if variant == 'asp_mtl' else variant
  c.adversary.enabled = variant == 'asp_mtl'
  return c
