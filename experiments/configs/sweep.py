"""A comparison sweep: weighting methods × seeds, with shared STL baselines
(`python -m mtl_jax.jobs.sweep --config experiments/configs/sweep.py[:variant] --workdir W`,
docs/report.md).

Variants:
  (none)  the built-in suite (default.py), six methods (a tuned static baseline among them)
          × three seeds, reported on the test split, the static weights tuned on validation.
  glue    a GLUE subset (glue.py; needs GLUE prepared, docs/datasets.md), on validation, with
          no tuned static baseline (GLUE's test labels are withheld: no second split).
  smoke   seconds per run: default.py:smoke, three methods × two seeds, a 2-value grid
          (tests, a first look).
  instructions  the instruction-tuning experiment (instructions.py): SmolLM2 on a text
          mixture, equal weights, a loss weighter, a gradient method and DoReMi's online
          weights × three seeds, with held-out clusters (docs/llm.md).
  instructions_smoke  its smoke: instructions.py:smoke, equal and doremi, one seed.
Override any field, e.g. `--config.seeds='(0,1)'` or `--config.base.num_steps=300`.
"""

import ml_collections

from experiments.configs import default, glue, instructions


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = 'Weighting methods on the built-in suite'
  # weighting.name of each, or 'tuned_static': static weights tuned by the sweep (tuned_static)
  c.methods = ('equal', 'tuned_static', 'uncertainty', 'famo', 'pcgrad', 'imtl')
  # A method's weighting.mode where it is not the base's: gradient methods on the shared
  # sentence features' gradients cost one backward pass through the encoder, not N.
  c.modes = ml_collections.ConfigDict({'pcgrad': 'representation', 'imtl': 'representation'})
  c.seeds = (0, 1, 2)
  c.reference = 'equal'  # step-time overhead is relative to this method
  c.report_split = 'test'  # the table's split (every run also scores tuned_static.split)
  # 'tuned_static': from all weights 1, one greedy pass of coordinate ascent over the tasks,
  # each weight tried at every grid value (1 + N (len(grid) - 1) runs at `seed`), maximising
  # Δm% over the tasks learnable alone on `split`, a split other than report_split.
  c.tuned_static = ml_collections.ConfigDict(dict(grid=(0.5, 1.0, 2.0), seed=0,
                                                  split='validation'))
  if variant == '':
    c.base = default.get_config()
  elif variant == 'glue':
    c.title = 'Weighting methods on a GLUE subset'
    c.base = glue.get_config()
    c.base.tasks = ('glue_sst2', 'glue_mrpc', 'glue_stsb', 'glue_rte')
    c.base.num_steps = 3000
    c.report_split = 'validation'
    c.methods = tuple(m for m in c.methods if m != 'tuned_static')
  elif variant == 'smoke':
    c.title = 'Smoke sweep'
    c.base = default.get_config('smoke')
    c.base.tasks = ('sentiment', 'similarity')
    c.base.num_steps = 6
    c.base.log_every = 2
    c.base.logging.representations = 0
    # Compiling is most of a 6-step run: one layer, and no checkpoints (a cut-short run
    # starts again; saving cost a quarter of the run).
    c.base.model.num_layers = 1
    c.base.checkpoint.every = 0
    c.methods = ('equal', 'tuned_static', 'pcgrad')
    c.tuned_static.grid = (0.5, 1.0)  # 3 tuning runs on the two tasks
    c.seeds = (0, 1)
  elif variant in ('instructions', 'instructions_smoke'):
    # The instruction-tuning experiment (docs/llm.md): SmolLM2 on a text mixture (or the
    # smoke's tiny random decoder); every run also scores the base model, the held-out
    # clusters and the general text. One validation split, so no tuned static baseline.
    c.title = 'Multi-task instruction tuning: weighting methods'
    c.base = instructions.get_config('' if variant == 'instructions' else 'smoke')
    c.methods = ('equal', 'uncertainty', 'pcgrad', 'doremi')
    c.modes = ml_collections.ConfigDict()
    c.report_split = 'validation'
    c.tuned_static.split = 'validation'
    if variant == 'instructions_smoke':
      c.methods, c.seeds = ('equal', 'doremi'), (0,)
  else:
    raise ValueError(f'Unknown variant {variant!r} of sweep.py; known: glue, smoke, '
                     f'instructions, instructions_smoke.')
  return c
