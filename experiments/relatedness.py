"""Does the relatedness knob move transfer? Conflict's MTL−STL gap at relatedness −1, 0 and +1.

  PYTHONPATH=. python -m experiments.relatedness --workdir runs/relatedness \
      [--seeds=3] [--label_fraction=0.05]

For each relatedness and seed, the main job's config (experiments/configs/default.py) trains
conflict alone (STL: mode 'single') and conflict with sentiment under hard sharing and equal
weights (MTL: mode 'multi'), same seed for both, so the gap is paired. Both read the same
sentences (every built-in sentence carries both labels); with --label_fraction < 1 conflict
keeps its labels on that fraction of them (config.data.label_fraction) while sentiment keeps
all: a scarce task beside a plentiful one, where sharing has something to give. A finished run
is reused and an unfinished one (its `.partial` folder) is redone. Prints a markdown table:
conflict's STL and MTL accuracy (mean ± sample std), the paired gap's mean and standard error,
and the verdict: positive transfer if gap > 2 SE, negative if gap < −2 SE, else none.
"""

import json
import os
import shutil

import numpy as np
from absl import app, flags, logging

from experiments.configs import default
from mtl_jax.jobs.main import train_and_evaluate

flags.DEFINE_string('workdir', None, 'Where the runs and their eval.json go.')
flags.DEFINE_list('relatedness', ['-1', '0', '1'], 'Values of config.data.relatedness.')
flags.DEFINE_integer('seeds', 3, 'Seeds per setting (config.seed; the data stay fixed).')
flags.DEFINE_float('label_fraction', 1.0, 'Fraction of the sentences labelled for conflict.')
flags.mark_flags_as_required(['workdir'])

PHASES = {'single': ('conflict',), 'multi': ('sentiment', 'conflict')}  # mode -> tasks


def run_config(mode: str, relatedness: float, seed: int, label_fraction: float):
  c = default.get_config()
  c.mode = mode
  c.tasks = PHASES[mode]
  c.seed = seed
  c.data.relatedness = relatedness
  if label_fraction < 1:
    c.data.label_fraction = {'conflict': label_fraction}
  c.reference = ''
  c.checkpoint.every = 0
  c.logging.representations = 0
  return c


def conflict_accuracy(mode: str, relatedness: float, seed: int, label_fraction: float,
                      workdir: str) -> float:
  """Conflict's accuracy on the validation split after the `mode` run."""
  path = os.path.join(workdir, 'eval.json')
  if not os.path.exists(path):
    partial = workdir + '.partial'
    shutil.rmtree(partial, ignore_errors=True)  # our own leftovers from a cut-short sweep
    train_and_evaluate(run_config(mode, relatedness, seed, label_fraction), partial)
    os.replace(partial, workdir)
  with open(path) as f:
    return json.load(f)[mode]['conflict']['accuracy']


def verdict(gap: float, se: float) -> str:
  if gap > 2 * se:
    return 'positive'
  if gap < -2 * se:
    return 'negative'
  return 'none'


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  f = flags.FLAGS
  print('| relatedness | conflict STL | conflict MTL | MTL − STL (± SE) | transfer |')
  print('|---|---|---|---|---|')
  for relatedness in map(float, f.relatedness):
    folder = lambda mode, seed: os.path.join(
        f.workdir, f'fraction_{f.label_fraction:g}', f'relatedness_{relatedness:g}',
        f'seed_{seed}', mode)
    stl, mtl = (np.array([conflict_accuracy(mode, relatedness, seed, f.label_fraction,
                                            folder(mode, seed)) for seed in range(f.seeds)])
                for mode in PHASES)
    gaps = mtl - stl
    se = gaps.std(ddof=1) / np.sqrt(len(gaps))
    print(f'| {relatedness:g} | {stl.mean():.4f} ± {stl.std(ddof=1):.4f} | '
          f'{mtl.mean():.4f} ± {mtl.std(ddof=1):.4f} | {gaps.mean():+.4f} ± {se:.4f} | '
          f'{verdict(gaps.mean(), se)} |', flush=True)


if __name__ == '__main__':
  app.run(main)
