"""MTL on the built-in suite with one sharing architecture (docs/sharing.md).

  python -m mtl_jax.train --config experiments/configs/sharing.py:shared_private --workdir W
  python -m mtl_jax.train --config experiments/configs/sharing.py:soft,smoke --workdir W \
      --config.model.args.penalty=trace --config.model.args.strength=1e-4

The variant names the architecture (a key of mtl_jax.models.architectures.ARCHITECTURES), or
'asp_mtl': shared-private with the adversary (Liu, Qiu & Huang 2017); ',smoke' takes
default.py's smoke sizes. The architecture's fields are listed under model.args at their
defaults, so the command line can override each one; the adversary's are under adversary.
"""

from experiments.configs import default
from mtl_jax.models import architectures


def get_config(variant: str = 'shared_private'):
  name, _, size = variant.partition(',')
  names = (*architectures.ARCHITECTURES, 'asp_mtl')
  if name not in names or size not in ('', 'smoke'):
    raise ValueError(f'Unknown variant {variant!r} of sharing.py; known: {names}, each '
                     f'optionally with ",smoke".')
  c = default.get_config(size)
  c.mode = 'multi'
  c.model.architecture = 'shared_private' if name == 'asp_mtl' else name
  c.model.args = architectures.default_args(c.model.architecture)
  c.adversary.enabled = name == 'asp_mtl'
  return c
