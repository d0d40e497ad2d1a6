"""One seed's figures marked against the documented spread of several seeds.

CPUs round floats differently and training amplifies it, so the main job's one seed does not
reproduce the figures documented over seeds 0, 1, 2: whether a difference matters depends on
their spread. A reference file holds that spread. The main job (mode 'both') run with
`--config.reference=FILE` prints, after its table, each task's primary metric (STL and MTL)
and Δm% of its seed against it, and writes the same into eval.json as 'reference_check'.
Given the workdir of a finished run, the same command adds the check without training again
(the finished phases are read back; `reference` is not part of what a run computes).

Write a reference from finished runs of one config, one per seed:

    python -m mtl_jax.report.reference --out experiments/reference/default.json W0 W1 W2

Each RUN is a main-job workdir (mode 'both': its eval.json and config.json), or one seed's
STL and MTL runs joined by a comma, as the sweep lays them out (mtl_jax.jobs.sweep):
`W/stl/seed_0,W/equal/seed_0`. A pair's config is its MTL run's with mode 'both'; its STL run
may differ from that in mode and weighting.* only (STL trains each task alone, unweighted).

The statistics: per figure, the mean and the sample std (ddof=1) over the n >= 2 seeds;
z = (value − mean) / std, and the verdict is 'within 2 std' where |z| <= 2, else 'differs'.
Where every seed gave the same value (std 0, e.g. a task predicted as one class) z is
undefined (null) and the verdict is 'within 2 std' when the value equals the mean within
SAME (1e-6), else 'differs'. A run that is one of the seeds lies within (n − 1)/√n std of
their mean (1.15 for 3 seeds). Δm% is recomputed from each run's primary metrics; where the
seeds' STL baselines name some task not learnable alone (eval.json's learnable_alone, in some
seed), a second Δm% covers the tasks learnable alone in every seed.

Runs are the same experiment when their config.json agree on every field but NOT_SHARED: a
reference refuses runs that differ elsewhere, naming the fields, and a run checked against a
reference of another config gets no verdicts, only the differing fields.
"""

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mtl_jax.errors import ConfigError
from mtl_jax.evaluation import summary
from mtl_jax.metrics import HIGHER_IS_BETTER
from mtl_jax.report.tables import mean_std, primary_values
from mtl_jax.train.writer import flatten

FORMAT = 1  # the reference file's layout
# config.json fields (a name covers the fields under it) that do not change what a run
# computes: the seed, this field, where the data lives, and what is only logged, saved,
# shown or how the run is launched.
NOT_SHARED = ('seed', 'reference', 'data.data_dir', 'log_every', 'logging', 'checkpoint',
              'distributed', 'faults.overwrite_workdir')
EVAL_SPLITS = 'data.eval_splits'
BOUND = 2.0  # the largest |z| that is 'within 2 std'
SAME = 1e-6  # std 0: the largest |value − mean| that is 'within' (one example of 500: 0.002)
WITHIN, DIFFERS = 'within 2 std', 'differs'
PHASES = {'single': 'STL', 'multi': 'MTL'}  # eval.json's key -> its name in the table
KEYS = ('format', 'seeds', 'config', 'primary_metric', 'tasks', 'delta_m')  # of a reference


class Run(NamedTuple):
  """One seed: the content of its eval.json and config.json, and where they came from."""
  name: str
  report: dict
  config: dict


def _without(config: Mapping, fields: Sequence[str]) -> dict:
  """config.json flattened ('a.b': value), less `fields` and the fields under them."""
  return {k: v for k, v in flatten(config, '.').items()
          if not any(k == f or k.startswith(f + '.') for f in fields)}


def shared_config(config: Mapping) -> dict:
  """The fields of config.json (flat) that decide what a run computes. Of data.eval_splits
  only the primary split counts: the others are scored besides, which trains nothing
  differently and leaves the primary figures as they are."""
  flat = _without(config, NOT_SHARED)
  if flat.get(EVAL_SPLITS):
    flat[EVAL_SPLITS] = list(flat[EVAL_SPLITS])[:1]
  return flat


def differences(ref: Mapping, run: Mapping) -> list[str]:
  """'field: ref -> run' for each field of two flat configs whose value differs."""
  missing = '(absent)'
  return [f'{k}: {ref.get(k, missing)!r} -> {run.get(k, missing)!r}'
          for k in sorted(ref.keys() | run.keys()) if ref.get(k, missing) != run.get(k, missing)]


def spread(values: Sequence[float]) -> dict:
  """{'mean', 'std' (sample, ddof=1), 'n', 'values'} of the seeds' values."""
  mean, std = mean_std(values)
  return {'mean': mean, 'std': std, 'n': len(values), 'values': list(values)}


def mark(value: float, ref: Mapping) -> dict:
  """value against a spread: {'value', 'mean', 'std', 'n', 'z', 'verdict'} (z None at std 0)."""
  diff = value - ref['mean']
  z = diff / ref['std'] if ref['std'] > 0 else None
  within = abs(diff) <= SAME if z is None else abs(z) <= BOUND
  return {'value': value, 'mean': ref['mean'], 'std': ref['std'], 'n': ref['n'], 'z': z,
          'verdict': WITHIN if within else DIFFERS}


def _delta_m(report: Mapping, primary: Mapping[str, str], tasks: Sequence[str]) -> float:
  """Δm% of a report's MTL against its STL primary metrics, over `tasks`."""
  metrics = {t: primary[t] for t in tasks}
  return summary.delta_m(primary_values(report['multi'], metrics),
                         primary_values(report['single'], metrics),
                         {t: HIGHER_IS_BETTER[m] for t, m in metrics.items()})


def build(runs: Sequence[Run]) -> dict:
  """The reference of runs of one config, one run per seed (module docstring)."""
  if len(runs) < 2:
    raise ValueError(f'A spread needs at least 2 seeds; got {len(runs)} run(s).')
  config = shared_config(runs[0].config)
  for run in runs[1:]:
    changes = differences(config, shared_config(run.config))
    if changes:
      raise ValueError(f'{run.name} is not the experiment of {runs[0].name}: their configs '
                       f'differ in more than the seed: {"; ".join(changes)}.')
  seeds = [r.config['seed'] for r in runs]
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    raise ValueError(f'Each run must have its own seed; seed(s) {repeated} repeat among '
                     f'{", ".join(r.name for r in runs)}.')
  primary = runs[0].report['primary_metric']
  values = [{p: primary_values(r.report[p], primary) for p in PHASES} for r in runs]
  ref = {'format': FORMAT, 'std': 'sample (ddof=1)', 'seeds': seeds, 'config': config,
         'primary_metric': primary,
         'tasks': {t: {p: spread([v[p][t] for v in values]) for p in PHASES} for t in primary},
         'delta_m': spread([_delta_m(r.report, primary, primary) for r in runs])}
  alone = [r.report.get('learnable_alone') for r in runs]
  learnable = [] if None in alone else [t for t in primary if all(a[t] for a in alone)]
  if 0 < len(learnable) < len(primary):
    ref['delta_m_learnable'] = {
        'tasks': learnable, **spread([_delta_m(r.report, primary, learnable) for r in runs])}
  return ref


def check(reference: Mapping, report: Mapping, config: Mapping) -> dict:
  """A run's report (eval.json) and config (config.json) against a reference: per task and
  phase its primary metric marked (see mark), and Δm%; or, where the configs differ in more
  than NOT_SHARED, no marks but 'config_differs': the fields, 'field: reference -> run'."""
  out = {'seeds': reference['seeds'], 'seed': config['seed']}
  changes = differences(reference['config'], shared_config(config))
  if changes:
    return {**out, 'config_differs': changes}
  primary = reference['primary_metric']
  values = {p: primary_values(report[p], primary) for p in PHASES}
  out['primary_metric'] = primary
  out['tasks'] = {t: {p: mark(values[p][t], reference['tasks'][t][p]) for p in PHASES}
                  for t in primary}
  out['delta_m'] = mark(_delta_m(report, primary, primary), reference['delta_m'])
  if 'delta_m_learnable' in reference:
    learnable = reference['delta_m_learnable']['tasks']
    out['delta_m_learnable'] = {'tasks': learnable, **mark(
        _delta_m(report, primary, learnable), reference['delta_m_learnable'])}
  return out


def _row(name: str, phase: str, metric: str, m: Mapping, digits: int) -> list[str]:
  z = '–' if m['z'] is None else f'{m["z"]:+.2f}'
  return [name, phase, metric, f'{m["value"]:.{digits}f}',
          f'{m["mean"]:.{digits}f} ± {m["std"]:.{digits}f}', z, m['verdict']]


def format_check(result: Mapping) -> str:
  """check()'s result as lines for the terminal."""
  seeds = ', '.join(map(str, result['seeds']))
  if 'config_differs' in result:
    return (f'Not marked against the documented seeds {seeds} (config.reference): this run\'s '
            f'config differs from theirs in {"; ".join(result["config_differs"])}.\n')
  member = ', one of them' if result['seed'] in result['seeds'] else ''
  rows = [_row(t, PHASES[p], result['primary_metric'][t], m, 4)
          for t, phases in result['tasks'].items() for p, m in phases.items()]
  rows.append(_row('Δm%', '', 'all tasks', result['delta_m'], 2))
  if 'delta_m_learnable' in result:
    rows.append(_row('Δm%', '', 'learnable alone', result['delta_m_learnable'], 2))
  header = ['task', 'phase', 'primary metric', 'this run', 'mean ± std', 'z', 'verdict']
  widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
  lines = [f'Against the documented seeds {seeds} (config.reference; this run: seed '
           f'{result["seed"]}{member}); sample std, z = (this run − mean) / std:']
  lines += [' | '.join(c.ljust(w) if i < 3 or i == 6 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header] + rows]
  if 'delta_m_learnable' in result:
    lines.append(f'Δm% learnable alone: over {", ".join(result["delta_m_learnable"]["tasks"])}'
                 f' (learnable alone in every documented seed).')
  outside = [f'{r[0]} {r[1] or r[2]}' for r in rows if r[6] == DIFFERS]
  lines.append(f'Beyond 2 std of the documented seeds: {", ".join(outside)}.' if outside else
               'Every figure lies within 2 std of the documented seeds.')
  return '\n'.join(lines) + '\n'


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      content = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such file.') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e}).') from None
  if not isinstance(content, dict):
    raise ValueError(f'{path}: holds a JSON {type(content).__name__}, not an object.')
  return content


def load(path: str) -> dict:
  """A reference file; missing or malformed raises an error naming `path`."""
  ref = _read_json(path)
  missing = [k for k in KEYS if k not in ref]
  if missing or ref['format'] != FORMAT:
    raise ValueError(f'{path}: not a reference file of format {FORMAT} (missing '
                     f'{missing or "nothing"}, format {ref.get("format")!r}); write one with '
                     f'python -m mtl_jax.report.reference.')
  return ref


def for_config(config) -> dict | None:
  """The reference that config.reference names, read before any training, so a missing or
  malformed file fails with no work lost. None for '' and in modes other than 'both': the
  reference marks a run's STL and MTL figures together, and configs derived from the main
  job's (sweeps, experiments) train one phase each."""
  if not config.reference or config.mode != 'both':
    return None
  try:
    return load(config.reference)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f'config.reference: {e}') from None


def _folder(path: str, phases: Sequence[str]) -> tuple[dict, dict]:
  """(eval.json, config.json) of a finished run folder whose eval.json holds `phases`."""
  report = _read_json(os.path.join(path, 'eval.json'))
  config = _read_json(os.path.join(path, 'config.json'))
  lacking = [PHASES[p] for p in phases if not report.get(p)]
  if lacking:
    raise ValueError(f'{os.path.join(path, "eval.json")}: a run of mode {report.get("mode")!r} '
                     f'has no {" or ".join(lacking)} results; give a mode \'both\' workdir, or '
                     f'a seed\'s STL and MTL runs joined by a comma (STL_DIR,MTL_DIR).')
  return report, config


def read_run(arg: str) -> Run:
  """One seed's Run: from a main-job workdir, or from 'STL_DIR,MTL_DIR'."""
  folders = arg.split(',')
  if len(folders) == 1:
    return Run(arg, *_folder(arg, tuple(PHASES)))
  if len(folders) != 2:
    raise ValueError(f'{arg}: give a main-job workdir, or an STL and an MTL run joined by a '
                     f'comma.')
  (stl, stl_config), (mtl, mtl_config) = _folder(folders[0], ('single',)), _folder(
      folders[1], ('multi',))
  compared = lambda c: {'seed': c['seed'], **_without(c, ('mode', 'weighting', *NOT_SHARED))}
  changes = differences(compared(stl_config), compared(mtl_config))
  if changes:
    raise ValueError(f'{arg}: the STL and the MTL run differ in more than mode and '
                     f'weighting: {"; ".join(changes)}.')
  report = {'single': stl['single'], 'multi': mtl['multi'],
            'primary_metric': mtl['primary_metric'],
            'learnable_alone': stl.get('learnable_alone')}
  return Run(arg, report, {**mtl_config, 'mode': 'both'})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='the reference file to write (JSON)')
  parser.add_argument('runs', nargs='+', metavar='RUN',
                      help='one per seed: a main-job workdir, or STL_DIR,MTL_DIR')
  args = parser.parse_args(argv)
  try:
    ref = build([read_run(r) for r in args.runs])
  except (FileNotFoundError, ValueError) as e:
    parser.error(str(e))
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(ref, f, indent=2, sort_keys=True)
    f.write('\n')
  print(f'wrote {args.out}: seeds {ref["seeds"]}, tasks {list(ref["primary_metric"])}')


if __name__ == '__main__':
  main()
