"""Low-level tasks supervised at lower layers (Søgaard & Goldberg 2016) on the built-in suite.

POS tags determine chunks on the built-in suite (docs/builtin_suite.md), so pos is the lower
task and chunk the higher one. Suite version 2 (the default here) has noun/verb homographs,
so a POS tag, and with it a chunk tag, needs context; in version 1 the word fixes its tag.
On a small 2-layer encoder, trained briefly on little data, the script compares (3 seeds,
validation split, mean ± std):
  STL                   each task alone, at the last layer;
  hard, both @2         hard sharing, both tasks at the last layer;
  hard, pos@1 chunk@2   hard sharing, pos supervised at layer 1 (config.task_depths);
  hier, both @2         'hierarchical' with one task layer each over the last shared layer
                        (the extra parameters without the lower supervision);
  hier, pos@1 chunk@2   'hierarchical' with one task layer each, pos branching at layer 1.

  PYTHONPATH=. python experiments/hierarchical_tagging.py [--seeds 3] [--steps 150]
      [--train_size 200] [--suite_version 2] [--data_dir DIR]
"""

import argparse
import tempfile

import numpy as np

from experiments.configs import default
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import load_task_data
from mtl_jax.train.loop import fit

TASKS = ('pos', 'chunk')
METRICS = (('pos', 'token_accuracy'), ('chunk', 'chunk_f1'))
VARIANTS = {  # name -> (architecture, task_layers, task depths; None = single-task runs)
    'STL': ('hard', 0, None),
    'hard, both @2': ('hard', 0, (-1, -1)),
    'hard, pos@1 chunk@2': ('hard', 0, (1, 2)),
    'hier, both @2': ('hierarchical', 1, (-1, -1)),
    'hier, pos@1 chunk@2': ('hierarchical', 1, (1, 2)),
}


def make_config(architecture: str, task_layers: int, depths, seed: int, args):
  """The default job, shrunk: two token tasks, a 2-layer encoder, few steps, little data."""
  c = default.get_config()
  c.mode = 'multi'
  c.seed = seed
  c.tasks = TASKS
  c.task_depths = depths or ()
  c.data.data_dir = args.data_dir
  c.data.train_size = args.train_size
  c.data.eval_size = 300
  c.data.suite_version = args.suite_version
  c.model.num_layers = 2
  c.model.architecture = architecture
  if architecture == 'hierarchical':
    c.model.args.task_layers = task_layers
  c.num_steps = args.steps
  c.log_every = args.steps
  c.optimizer.warmup_steps = args.steps // 10
  return c


def run(name: str, seed: int, workdir: str, args) -> dict[str, float]:
  """One variant and seed -> {task: its metric} on the validation split."""
  architecture, task_layers, depths = VARIANTS[name]
  config = config_lib.resolved(make_config(architecture, task_layers, depths, seed, args))
  tasks = config_lib.validate(config)
  groups = [(t,) for t in tasks] if depths is None else [tasks]  # STL: one model per task
  scores = {}
  for group in groups:
    data = load_task_data(config.data, group)
    label = '+'.join(t.name for t in group)
    metrics = fit(config, group, data, f'{workdir}/{name}/{seed}/{label}',
                  weighting.get('equal'), desc=f'{name} seed {seed} {label}').metrics
    scores.update({t: metrics[t][m] for t, m in METRICS if t in metrics})
  return scores


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--train_size', type=int, default=200)
  parser.add_argument('--suite_version', type=int, default=2,
                      help='2: homographs make POS need context (docs/hierarchical.md)')
  parser.add_argument('--data_dir', default='')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as workdir:
    results = {name: [run(name, seed, workdir, args) for seed in range(args.seeds)]
               for name in VARIANTS}
  print(f'\n{args.seeds} seeds, {args.steps} steps, train_size {args.train_size}, suite '
        f'version {args.suite_version}, 2-layer encoder; validation split, mean ± std '
        f'(population)')
  print(f'{"variant":<22}' + ''.join(f'{t + " " + m:>24}' for t, m in METRICS))
  for name, runs in results.items():
    cells = [np.array([r[t] for r in runs]) for t, _ in METRICS]
    print(f'{name:<22}' + ''.join(f'{x.mean():>16.4f} ± {x.std():.4f}' for x in cells))


if __name__ == '__main__':
  main()
