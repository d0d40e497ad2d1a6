"""ASP-MTL-style comparison (Liu, Qiu & Huang 2017) on the built-in suite: hard sharing vs
shared-private vs shared-private with the adversary, across settings of the relatedness knob
(how much the `conflict` task shares with `sentiment`), over several seeds.

  python -m experiments.asp_mtl --workdir runs/asp_mtl [--relatedness=0,0.5,1 --seeds=3]

Each run is `mtl_jax.train` with experiments/configs/sharing.py and the overrides below; its
eval.json lands in WORKDIR/<setting>/<model>/seed_<k>. A finished run is reused and an
unfinished one (its `.partial` folder) is redone, so a cut-short sweep resumes. Prints a
markdown table of the primary metrics, mean ± std over seeds.
"""

import json
import os
import shutil

import numpy as np
from absl import app, flags, logging

from experiments.configs import sharing
from mtl_jax.train.host_memory import keep_step_buffers_resident
from mtl_jax.jobs.main import train_and_evaluate

flags.DEFINE_string('workdir', None, 'Where the runs and their eval.json go.')
flags.DEFINE_list('relatedness', ['0', '0.5', '1'], 'Values of config.data.relatedness.')
flags.DEFINE_integer('seeds', 3, 'Seeds per setting (config.seed; the data stay fixed).')
flags.DEFINE_list('tasks', ['sentiment', 'topic', 'conflict'], 'The tasks trained jointly.')
flags.DEFINE_integer('num_steps', 400, 'Train steps per run.')
flags.DEFINE_integer('train_size', 1000, 'Built-in suite examples per task.')
flags.DEFINE_integer('hidden_size', 64, 'Shared encoder width (4 x this is the FFN).')
flags.DEFINE_integer('num_layers', 2, 'Shared encoder depth.')
flags.DEFINE_float('adversary_weight', 0.05, 'λ_adv of the adversarial model.')
flags.mark_flags_as_required(['workdir'])

MODELS = {'hard': 'hard', 'shared-private': 'shared_private', 'SP + adversary': 'asp_mtl'}


def run_config(variant: str, relatedness: float, seed: int):
  f = flags.FLAGS
  c = sharing.get_config(variant)
  c.tasks = tuple(f.tasks)
  c.seed = seed
  c.num_steps = f.num_steps
  c.data.train_size = f.train_size
  c.data.relatedness = relatedness
  c.model.hidden_size = f.hidden_size
  c.model.intermediate_size = 4 * f.hidden_size
  c.model.num_layers = f.num_layers
  c.adversary.weight = f.adversary_weight
  return c


def run(variant: str, relatedness: float, seed: int, workdir: str) -> dict:
  path = os.path.join(workdir, 'eval.json')
  if not os.path.exists(path):
    partial = workdir + '.partial'
    shutil.rmtree(partial, ignore_errors=True)  # our own leftovers from a cut-short sweep
    train_and_evaluate(run_config(variant, relatedness, seed), partial)
    os.replace(partial, workdir)
  with open(path) as f:
    report = json.load(f)
  return {t: report['multi'][t][m] for t, m in report['primary_metric'].items()}


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  keep_step_buffers_resident()
  f = flags.FLAGS
  rows = []
  for relatedness in map(float, f.relatedness):
    for label, variant in MODELS.items():
      scores = [run(variant, relatedness, seed,
                    os.path.join(f.workdir, f'relatedness_{relatedness:g}', variant,
                                 f'seed_{seed}'))
                for seed in range(f.seeds)]
      per_task = {t: np.array([s[t] for s in scores]) for t in f.tasks}
      mean = np.mean([v for v in per_task.values()], axis=0)
      cells = [f'{v.mean():.3f} ± {v.std():.3f}' for v in (*per_task.values(), mean)]
      rows.append(f'| {relatedness:g} | {label} | ' + ' | '.join(cells) + ' |')
  print(f'| relatedness | model | {" | ".join(f.tasks)} | mean |')
  print('|---|---|' + '---|' * (len(f.tasks) + 1))
  print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main)
