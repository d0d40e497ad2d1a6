"""python -m mtl_jax.report.sweep --config experiments/configs/sweep.py[:variant] --workdir W

Runs methods × seeds on the sweep's base config, then writes W/report.md (mtl_jax.report.
tables). The single-task baselines are trained once per seed and shared by every method:

    W/stl/seed_<s>/          mode='single' (its single/<task>/ runs and eval.json)
    W/<method>/seed_<s>/     mode='multi' with weighting.name=<method>
    W/report.md

A run is finished when its eval.json exists; running the command again skips finished runs
and runs the rest with the same config in the same folder, so a cut-short run continues from
its last checkpoint (docs/checkpoints.md) and the sweep resumes where it stopped.
"""

import json
import os

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import weighting
from mtl_jax.evaluation.metrics import HIGHER_IS_BETTER
from mtl_jax.parallel.distributed import is_writer
from mtl_jax.report import tables
from mtl_jax.report.plots import read_jsonl

config_flags.DEFINE_config_file('config', None, 'Sweep config file (experiments/configs/'
                                'sweep.py).', lock_config=False)
flags.DEFINE_string('workdir', None, 'Where the runs and report.md are written.')
flags.mark_flags_as_required(['config', 'workdir'])

REPORT = 'report.md'


def run_dir(workdir: str, method: str | None, seed: int) -> str:
  """Where one run lives: W/stl/seed_<s> for the baselines (method None), else
  W/<method>/seed_<s>."""
  return os.path.join(workdir, method or 'stl', f'seed_{seed}')


def run_config(sweep: ml_collections.ConfigDict, seed: int, method: str | None
               ) -> ml_collections.ConfigDict:
  """The sweep's base config for one run: STL baselines (method None) or MTL with `method`,
  its default arguments, and its weighting mode from `sweep.modes` (else the base's)."""
  config = ml_collections.ConfigDict(sweep.base.to_dict())
  config.seed = seed
  config.mode = 'single' if method is None else 'multi'
  if method is not None:
    config.weighting.name = method
    config.weighting.args = ml_collections.ConfigDict(weighting.default_args(method))
    config.weighting.mode = sweep.get('modes', {}).get(method, config.weighting.mode)
  return config


def pending(workdir: str, methods, seeds) -> list[tuple[str | None, int]]:
  """The (method or None for STL, seed) runs without an eval.json, baselines first."""
  runs = [(None, s) for s in seeds] + [(m, s) for m in methods for s in seeds]
  return [r for r in runs if not os.path.exists(os.path.join(run_dir(workdir, *r), 'eval.json'))]


def collect(workdir: str, methods, seeds) -> tables.SweepResults:
  """The finished runs' primary metrics and step times (unfinished runs are left out)."""
  primary, stl, mtl, step_time = {}, {}, {m: {} for m in methods}, {m: {} for m in methods}
  learnable = []  # each baseline's learnable_alone (None where its eval.json lacks it)
  for method in (None, *methods):
    for seed in seeds:
      path = run_dir(workdir, method, seed)
      if not os.path.exists(os.path.join(path, 'eval.json')):
        continue
      with open(os.path.join(path, 'eval.json')) as f:
        report = json.load(f)
      primary = report['primary_metric']
      if method is None:
        stl[seed] = tables.primary_values(report['single'], primary)
        learnable.append(report.get('learnable_alone'))
        continue
      mtl[method][seed] = tables.primary_values(report['multi'], primary)
      seconds = tables.median_step_time(read_jsonl(os.path.join(path, 'metrics.jsonl')))
      if seconds is not None:
        step_time[method][seed] = seconds
  higher = {t: HIGHER_IS_BETTER[m] for t, m in primary.items()}
  every_seed = (None if not learnable or None in learnable else
                frozenset(t for t in primary if all(seed[t] for seed in learnable)))
  return tables.SweepResults(primary, higher, stl, {m: v for m, v in mtl.items() if v},
                             step_time, every_seed)


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains every pending run, then writes and returns W/report.md."""
  from mtl_jax.train.loop import train_and_evaluate  # JAX only when something trains
  for method, seed in pending(workdir, sweep.methods, sweep.seeds):
    path = run_dir(workdir, method, seed)
    print(f'== {method or "STL baselines"}, seed {seed} -> {path}', flush=True)
    train_and_evaluate(run_config(sweep, seed, method), path)
  report = tables.markdown(collect(workdir, sweep.methods, sweep.seeds), sweep.reference,
                           sweep.title)
  if is_writer():
    with open(os.path.join(workdir, REPORT), 'w') as f:
      f.write(report)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.ERROR)
  print(run_sweep(flags.FLAGS.config, flags.FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
