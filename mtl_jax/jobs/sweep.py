"""python -m mtl_jax.jobs.sweep --config experiments/configs/sweep.py[:variant] --workdir W

Runs methods × seeds on the sweep's base config, then writes W/report.md (mtl_jax.report.
tables). The single-task baselines are trained once per seed and shared by every method:

    W/stl/seed_<s>/              mode='single' (its single/<task>/ runs and eval.json)
    W/<method>/seed_<s>/         mode='multi' with weighting.name=<method>
    W/static_tuning/<weights>/   the tuned static baseline's search (tune), search.json
    W/report.md

Every run scores two splits of the built-in suite: the tuning split (its primary: curves and
which tasks are learnable alone are judged there) and `report_split`, which the table shows.
The method 'tuned_static' (TUNED_STATIC) is weighting 'static' with weights that `tune` chose
on the tuning split of one seed, so nothing the table shows steered the choice.

A run is finished when its eval.json exists; running the command again skips finished runs
and runs the rest with the same config in the same folder, so a cut-short run continues from
its last checkpoint (docs/checkpoints.md) and the sweep, the search included, resumes where it
stopped.
"""

import json
import os
import statistics
from collections.abc import Callable, Iterator, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import weighting
from mtl_jax.data.text_data import GENERAL
from mtl_jax.evaluation import summary
from mtl_jax.evaluation.evaluate import split_prefix
from mtl_jax.metrics import HIGHER_IS_BETTER
from mtl_jax.parallel.distributed import is_writer
from mtl_jax.report import tables
from mtl_jax.report.plots import read_jsonl

config_flags.DEFINE_config_file('config', None, 'Sweep config file (experiments/configs/'
                                'sweep.py).', lock_config=False)
flags.DEFINE_string('workdir', None, 'Where the runs and report.md are written.')
flags.mark_flags_as_required(['config', 'workdir'])

REPORT = 'report.md'
EVAL = 'eval.json'  # a run's results, written when it finishes
TUNED_STATIC = 'tuned_static'  # the pseudo-method of tuned static weights (tune)
TUNING = 'static_tuning'  # W/static_tuning/: the search's runs and SEARCH
SEARCH = 'search.json'

Point = tuple[float, ...]


def check(sweep: ml_collections.ConfigDict):
  """Errors in the sweep's own fields, before anything trains."""
  if TUNED_STATIC in weighting.names():
    raise ValueError(f'A weighting module is named {TUNED_STATIC!r}, the sweep\'s name of its '
                     f'tuned static baseline: rename one of them.')
  unknown = [m for m in sweep.methods if m not in (*weighting.names(), TUNED_STATIC)]
  if unknown:
    raise ValueError(f'config.methods: unknown {unknown}; known: {weighting.names()} and '
                     f'{TUNED_STATIC!r}.')
  if TUNED_STATIC in sweep.methods:
    if sweep.tuned_static.split == sweep.report_split:
      raise ValueError(f'config.tuned_static.split: the static weights are tuned on a split '
                       f'other than the one reported (report_split={sweep.report_split!r}).')
    if not sweep.tuned_static.grid:
      raise ValueError('config.tuned_static.grid: give one or more weights to try.')


def eval_splits(sweep: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits every run scores (its data.eval_splits): the tuning split first (primary),
  then the report split."""
  return tuple(dict.fromkeys((sweep.tuned_static.split, sweep.report_split)))


def finished(path: str) -> bool:
  """Whether the run in `path` is finished: its eval.json exists."""
  return os.path.exists(os.path.join(path, EVAL))


def read_eval(path: str) -> dict:
  with open(os.path.join(path, EVAL)) as f:
    return json.load(f)


def run_dir(workdir: str, method: str | None, seed: int) -> str:
  """Where one run lives: W/stl/seed_<s> for the baselines (method None), else
  W/<method>/seed_<s>."""
  return os.path.join(workdir, method or 'stl', f'seed_{seed}')


def run_config(sweep: ml_collections.ConfigDict, seed: int, method: str | None,
               task_weights: Point = ()) -> ml_collections.ConfigDict:
  """The sweep's base config for one run, scoring eval_splits: STL baselines (method None) or
  MTL with `method`, its default arguments, and its weighting mode from `sweep.modes` (else
  the base's). TUNED_STATIC is weighting 'static' with `task_weights`."""
  config = ml_collections.ConfigDict(sweep.base.to_dict())
  config.seed = seed
  config.mode = 'single' if method is None else 'multi'
  config.data.eval_splits = eval_splits(sweep)
  if method is not None:
    name = 'static' if method == TUNED_STATIC else method
    config.weighting.name = name
    config.weighting.args = ml_collections.ConfigDict(weighting.default_args(name))
    config.weighting.mode = sweep.get('modes', {}).get(method, config.weighting.mode)
    config.task_weights = tuple(task_weights)
  return config


def pending(workdir: str, methods, seeds) -> list[tuple[str | None, int]]:
  """The (method or None for STL, seed) runs without an eval.json, baselines first."""
  runs = [(None, s) for s in seeds] + [(m, s) for m in methods for s in seeds]
  return [r for r in runs if not finished(run_dir(workdir, *r))]


def coordinate_ascent(objective: Callable[[Point], float], start: Point,
                      grid: Sequence[float]) -> tuple[list[tuple[Point, float]], Point]:
  """One greedy pass of coordinate ascent, maximising `objective`: for each coordinate in
  order, every grid value with the others at the best point so far; a value is kept when it
  beats the best (a tie keeps the best). Returns (every distinct point evaluated with its
  objective, in order of evaluation; the best point).

  Each point is evaluated once, so the cost is 1 + N (len(grid) − 1) evaluations when the
  start's values are in the grid. One pass over the coordinates finds the grid's optimum of
  a separable objective; where coordinates interact it may stop short of it."""
  path = {}

  def value(point: Point) -> float:
    if point not in path:
      path[point] = objective(point)
    return path[point]

  best = tuple(start)
  value(best)
  for i in range(len(best)):
    for x in grid:
      trial = (*best[:i], float(x), *best[i + 1:])
      if value(trial) > value(best):
        best = trial
  return list(path.items()), best


def tuning_dir(workdir: str, tasks: Sequence[str], weights: Point) -> str:
  """W/static_tuning/<task>=<weight>+...: one run of the search."""
  return os.path.join(workdir, TUNING, '+'.join(f'{t}={w:g}' for t, w in zip(tasks, weights)))


def train(config: ml_collections.ConfigDict, path: str, label: str):
  from mtl_jax.jobs.main import train_and_evaluate  # JAX only when something trains
  print(f'== {label} -> {path}', flush=True)
  train_and_evaluate(config, path)


def tune(sweep: ml_collections.ConfigDict, workdir: str) -> dict:
  """Chooses TUNED_STATIC's weights: coordinate_ascent from all weights 1 over
  `tuned_static.grid`, maximising Δm% on the tuning split of `tuned_static.seed` against that
  seed's STL baselines, over the tasks learnable alone there (all tasks when none is). Trains
  what is not finished (that seed's baselines, the search's runs). Writes and returns
  W/static_tuning/search.json: the chosen weights, every point with its objective, the cost."""
  cfg, tasks = sweep.tuned_static, tuple(sweep.base.tasks)
  prefix = split_prefix(cfg.split, eval_splits(sweep))
  stl_path = run_dir(workdir, None, cfg.seed)
  if not finished(stl_path):
    train(run_config(sweep, cfg.seed, None), stl_path, f'STL baselines, seed {cfg.seed}')
  stl = read_eval(stl_path)
  learnable = stl.get('learnable_alone') or {}
  scored = {t: m for t, m in stl['primary_metric'].items() if learnable.get(t)}
  objective_text = f'Δm% over the tasks learnable alone ({", ".join(scored)})'
  if not scored:
    scored = stl['primary_metric']
    objective_text = 'Δm% over all tasks (none is learnable alone)'
  higher = {t: HIGHER_IS_BETTER[m] for t, m in scored.items()}
  baseline = tables.primary_values(stl['single'], scored, prefix)

  def objective(weights: Point) -> float:
    path = tuning_dir(workdir, tasks, weights)
    if not finished(path):
      train(run_config(sweep, cfg.seed, TUNED_STATIC, weights), path,
            f'static weights {weights}, seed {cfg.seed}')
    multi = read_eval(path)['multi']
    return summary.delta_m(tables.primary_values(multi, scored, prefix), baseline, higher)

  path, best = coordinate_ascent(objective, (1.0,) * len(tasks), cfg.grid)
  points = []
  for weights, value in path:
    run = tuning_dir(workdir, tasks, weights)
    seconds = tables.training_seconds(read_jsonl(os.path.join(run, 'metrics.jsonl')))
    points.append({'weights': list(weights), 'delta_m': value,
                   'run': os.path.relpath(run, workdir), 'training_seconds': seconds})
  search = {'method': TUNED_STATIC, 'tasks': list(tasks), 'grid': list(cfg.grid),
            'split': cfg.split, 'seed': cfg.seed, 'report_split': sweep.report_split,
            'objective': objective_text, 'weights': list(best), 'delta_m': dict(path)[best],
            'path': points, 'runs': len(points),
            'training_seconds': sum(p['training_seconds'] for p in points)}
  if is_writer():
    with open(os.path.join(workdir, TUNING, SEARCH), 'w') as f:
      json.dump(search, f, indent=2)
  return search


def finished_runs(workdir: str, methods, seeds) -> Iterator[tuple[str | None, int, str, dict]]:
  """(method or None for STL, seed, folder, eval.json) of each finished run, baselines first."""
  for method in (None, *methods):
    for seed in seeds:
      path = run_dir(workdir, method, seed)
      if finished(path):
        yield method, seed, path, read_eval(path)


def collect(workdir: str, methods, seeds, prefix: str = '') -> tables.SweepResults:
  """The finished runs' primary metrics (on the split `prefix` names: split_prefix) and step
  times (unfinished runs are left out)."""
  primary, stl, mtl, step_time = {}, {}, {m: {} for m in methods}, {m: {} for m in methods}
  learnable = []  # each baseline's learnable_alone (None where its eval.json lacks it)
  for method, seed, path, report in finished_runs(workdir, methods, seeds):
    primary = report['primary_metric']
    if method is None:
      stl[seed] = tables.primary_values(report['single'], primary, prefix)
      learnable.append(report.get('learnable_alone'))
      continue
    mtl[method][seed] = tables.primary_values(report['multi'], primary, prefix)
    seconds = tables.median_step_time(read_jsonl(os.path.join(path, 'metrics.jsonl')))
    if seconds is not None:
      step_time[method][seed] = seconds
  higher = {t: HIGHER_IS_BETTER[m] for t, m in primary.items()}
  every_seed = (None if not learnable or None in learnable else
                frozenset(t for t in primary if all(seed[t] for seed in learnable)))
  return tables.SweepResults(primary, higher, stl, {m: v for m, v in mtl.items() if v},
                             step_time, every_seed)


def _columns(held: dict, forgetting: dict | None, clusters, scores: dict, base: dict
             ) -> dict[str, float | None]:
  """One row's cells of the untrained section from one phase's `scores` (name -> metrics):
  each held-out task's primary metric, each cluster's gain over `base`, the general text's
  bits per byte."""
  primary = held.get('primary_metric', {})
  value = lambda by, names: {n: by[n][primary[n]] for n in names}
  arrow = lambda n: '↑' if HIGHER_IS_BETTER[primary[n]] else '↓'
  cells = {f'{n} ({primary[n]} {arrow(n)})': v for n, v in value(scores, primary).items()}
  for cluster, members in clusters.items():
    cells[f'{cluster} (gain %)'] = summary.gain_where_defined(
        value(scores, members), value(base, members),
        {n: HIGHER_IS_BETTER[primary[n]] for n in members})
  if forgetting is not None:
    cells[f'{GENERAL} (bits_per_byte ↓)'] = scores[GENERAL]['bits_per_byte']
  return cells


def untrained_rows(workdir: str, methods, seeds, clusters
                   ) -> dict[str, dict[int, dict[str, float | None]]]:
  """A text sweep's scores of what no run trains on, row -> seed -> column -> value: 'base'
  (the untrained model), 'STL' (the mean over the seed's single-task models) and each
  method's MTL model (columns: _columns). Empty for a sweep of other runs."""
  rows: dict[str, dict[int, dict]] = {}
  for method, seed, _, report in finished_runs(workdir, methods, seeds):
    held, forgetting = report.get('held_out', {}), report.get('forgetting')
    if not held and forgetting is None:
      return {}
    merged = lambda phase: {**held.get(phase, {}), **(
        {GENERAL: forgetting[phase]} if forgetting is not None else {})}
    base = merged('base')
    cells = lambda scores: _columns(held, forgetting, clusters, scores, base)
    rows.setdefault('base', {}).setdefault(seed, cells(base))
    if method is None:
      models = [{**held.get('single', {}).get(t, {}), **(
          {GENERAL: forgetting['single'][t]} if forgetting is not None else {})}
                for t in report['single']]
      per_model = [cells(m) for m in models]
      rows.setdefault(tables.STL, {})[seed] = {
          k: (None if any(c[k] is None for c in per_model)
              else statistics.fmean(c[k] for c in per_model)) for k in per_model[0]}
    else:
      rows.setdefault(method, {})[seed] = cells(merged('multi'))
  return rows


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains every pending run (the tuned static baseline's search first), then writes and
  returns W/report.md."""
  check(sweep)
  search = tune(sweep, workdir) if TUNED_STATIC in sweep.methods else None
  for method, seed in pending(workdir, sweep.methods, sweep.seeds):
    weights = search['weights'] if method == TUNED_STATIC else ()
    train(run_config(sweep, seed, method, weights), run_dir(workdir, method, seed),
          f'{method or "STL baselines"}, seed {seed}')
  splits = eval_splits(sweep)
  notes = [f'Every figure is on the {sweep.report_split} split; which tasks are learnable '
           f'alone is judged on the STL baselines\' {splits[0]} split.']
  results = collect(workdir, sweep.methods, sweep.seeds, split_prefix(sweep.report_split, splits))
  report = tables.markdown(results, sweep.reference, sweep.title, notes)
  untrained = untrained_rows(workdir, sweep.methods, sweep.seeds,
                             dict(sweep.base.get('text', {}).get('clusters', {})))
  if untrained:
    report += '\n' + tables.untrained_section(untrained)
  if search is not None:
    report += '\n' + tables.tuning_section(search)
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
