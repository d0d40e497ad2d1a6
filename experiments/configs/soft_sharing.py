"""Soft sharing on the built-in suite: one encoder per task (or task group), coupled by a
penalty (docs/soft_sharing.md).

  python -m mtl_jax.train --config experiments/configs/soft_sharing.py --workdir W
  python -m mtl_jax.train --config experiments/configs/soft_sharing.py:trace --workdir W \
      --config.model.args.strength=1e-4 --config.model.args.groups=0,0,1,1,2,2,2

Variants: '' (the L2 penalty, default.py's main job), 'trace' (the trace-norm penalty);
'smoke' or 'trace_smoke' on default.py's smoke setting. The architecture's fields are all
listed under model.args, at their defaults, so the command line can override each one.
"""

import ml_collections

from experiments.configs import default
from mtl_jax.models.soft import SoftSharing

VARIANTS = ('', 'trace', 'smoke', 'trace_smoke')


def get_config(variant: str = ''):
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r} of soft_sharing.py; known: {VARIANTS}.')
  c = default.get_config('smoke' if variant.endswith('smoke') else '')
  c.model.architecture = 'soft'
  fields = SoftSharing.__dataclass_fields__
  c.model.args = ml_collections.ConfigDict(
      {name: fields[name].default for name in ('groups', 'penalty', 'strength')})
  if variant.startswith('trace'):
    c.model.args.penalty = 'trace'
  return c
