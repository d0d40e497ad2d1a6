"""A comparison sweep: weighting methods × seeds, with shared STL baselines
(`python -m mtl_jax.report.sweep --config experiments/configs/sweep.py[:variant] --workdir W`,
docs/report.md).

Variants:
  (none)  the built-in suite (default.py), five methods × three seeds.
  glue    a GLUE subset (glue.py; needs GLUE prepared, docs/datasets.md).
  smoke   seconds per run: default.py:smoke, two methods × two seeds (tests, a first look).
Override any field, e.g. `--config.seeds='(0,1)'` or `--config.base.num_steps=300`.
"""

import ml_collections

from experiments.configs import default, glue


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = 'Weighting methods on the built-in suite'
  c.methods = ('equal', 'uncertainty', 'famo', 'pcgrad', 'imtl')  # weighting.name of each
  # A method's weighting.mode where it is not the base's: gradient methods on the shared
  # sentence features' gradients cost one backward pass through the encoder, not N.
  c.modes = ml_collections.ConfigDict({'pcgrad': 'representation', 'imtl': 'representation'})
  c.seeds = (0, 1, 2)
  c.reference = 'equal'  # step-time overhead is relative to this method
  if variant == '':
    c.base = default.get_config()
  elif variant == 'glue':
    c.title = 'Weighting methods on a GLUE subset'
    c.base = glue.get_config()
    c.base.tasks = ('glue_sst2', 'glue_mrpc', 'glue_stsb', 'glue_rte')
    c.base.num_steps = 3000
  elif variant == 'smoke':
    c.title = 'Smoke sweep'
    c.base = default.get_config('smoke')
    c.base.tasks = ('sentiment', 'similarity')
    c.base.num_steps = 6
    c.base.log_every = 2
    c.base.logging.representations = 0
    c.methods = ('equal', 'pcgrad')
    c.seeds = (0, 1)
  else:
    raise ValueError(f'Unknown variant {variant!r} of sweep.py; known: glue, smoke.')
  return c
