"""The main job: hard-sharing MTL on the built-in suite, with single-task baselines.

Variants (`--config experiments/configs/default.py:VARIANT`):
  (none)  the default: 7 tasks, STL baselines + MTL, a few minutes on a 2-core CPU.
  smoke   seconds: tiny data and model, for tests and a first look.
Any field can be overridden on the command line, e.g. `--config.num_steps=200`. The fields,
their defaults and what they mean are mtl_jax/schema.py's (docs/config.md).
"""

import os

import ml_collections

from mtl_jax import schema, weighting

def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = schema.defaults()
  if not variant:
    c.reference = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'reference', 'default.json')  # seeds 0-2 of this config
  elif variant == 'smoke':  # no documented reference
    c.tasks = ('pos', 'sentiment', 'entailment', 'similarity')  # every head kind, 5 short runs
    c.data.train_size = 64
    c.data.eval_size = 32
    c.data.seq_len = 32
    c.model.hidden_size = 32
    c.model.intermediate_size = 64
    c.model.max_len = 32
    c.num_steps = 20
    c.log_every = 5
    c.batch_size = 16
    c.optimizer.warmup_steps = 5
    c.checkpoint.every = 10
    c.mesh.devices = 1  # a model this small gains nothing from more: each adds a partition
  else:
    raise ValueError(f'Unknown variant {variant!r} of default.py; known: smoke.')
  return c


def method_config(method: str, mode: str, diagnostics: bool) -> ml_collections.ConfigDict:
  """The default job, MTL only, with a weighting method. Diagnostics are free for gradient
  methods (they hold the Gram matrix) and cost N backward passes for a loss weighter."""
  c = get_config()
  c.mode = 'multi'
  c.weighting.name = method
  c.weighting.mode = mode
  c.weighting.diagnostics = diagnostics
  c.weighting.args = ml_collections.ConfigDict(weighting.default_args(method))
  return c
