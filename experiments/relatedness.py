"""Does the relatedness knob move transfer? Conflict's MTL−STL gap at relatedness −1, 0 and +1.

  PYTHONPATH=. python -m experiments.relatedness --workdir runs/relatedness [--seeds=3]

For each relatedness and seed, the main job (experiments/configs/default.py, mode 'both') on
the tasks (sentiment, conflict): conflict alone (STL) and with sentiment under hard sharing and
equal weights (MTL), same seed for both, so the gap is paired. A finished run is reused and an
unfinished one (its `.partial` folder) is redone. Prints a markdown table: conflict's STL and
MTL accuracy (mean ± sample std), the paired gap's mean and standard error, and the verdict the
issue asks for: positive transfer if gap > 2 SE, negative if gap < −2 SE, else none.
"""

import json
import os
import shutil

import numpy as np
from absl import app, flags, logging

from experiments.configs import default
from mtl_jax.train.loop import train_and_evaluate

flags.DEFINE_string('workdir', None, 'Where the runs and their eval.json go.')
flags.DEFINE_list('relatedness', ['-1', '0', '1'], 'Values of config.data.relatedness.')
flags.DEFINE_integer('seeds', 3, 'Seeds per setting (config.seed; the data stay fixed).')
flags.mark_flags_as_required(['workdir'])

TASKS = ('sentiment', 'conflict')


def run_config(relatedness: float, seed: int):
  c = default.get_config()
  c.tasks = TASKS
  c.seed = seed
  c.data.relatedness = relatedness
  c.checkpoint.every = 0
  c.logging.representations = 0
  return c


def conflict_accuracy(relatedness: float, seed: int, workdir: str) -> tuple[float, float]:
  """(STL, MTL) accuracy of conflict on the validation split."""
  path = os.path.join(workdir, 'eval.json')
  if not os.path.exists(path):
    partial = workdir + '.partial'
    shutil.rmtree(partial, ignore_errors=True)  # our own leftovers from a cut-short sweep
    train_and_evaluate(run_config(relatedness, seed), partial)
    os.replace(partial, workdir)
  with open(path) as f:
    report = json.load(f)
  return report['single']['conflict']['accuracy'], report['multi']['conflict']['accuracy']


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
    stl, mtl = np.array([conflict_accuracy(
        relatedness, seed, os.path.join(f.workdir, f'relatedness_{relatedness:g}',
                                        f'seed_{seed}')) for seed in range(f.seeds)]).T
    gaps = mtl - stl
    se = gaps.std(ddof=1) / np.sqrt(len(gaps))
    print(f'| {relatedness:g} | {stl.mean():.4f} ± {stl.std(ddof=1):.4f} | '
          f'{mtl.mean():.4f} ± {mtl.std(ddof=1):.4f} | {gaps.mean():+.4f} ± {se:.4f} | '
          f'{verdict(gaps.mean(), se)} |', flush=True)


if __name__ == '__main__':
  app.run(main)
