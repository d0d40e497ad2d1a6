"""The markdown report of a sweep: how MTL papers report (docs/report.md).

Per method: each task's primary metric as mean ± std over seeds, Δm% against the STL
baselines of the same seed (then mean ± std over seeds), and the median step time with its
overhead over a reference method; the best method per task is marked. Std is the sample
standard deviation (n − 1); with one seed it is 0. A sweep with a tuned static baseline adds
its search (tuning_section); a sweep of text runs, what no run trains on (untrained_section).
"""

import statistics
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from mtl_jax.evaluation import summary

STL = 'STL'  # the row of the single-task baselines


class SweepResults(NamedTuple):
  primary: dict[str, str]  # task -> primary metric
  higher: dict[str, bool]  # task -> whether higher is better
  stl: dict[int, dict[str, float]]  # seed -> task -> STL primary metric
  mtl: dict[str, dict[int, dict[str, float]]]  # method -> seed -> task -> primary metric
  step_time: dict[str, dict[int, float]]  # method -> seed -> median seconds per step
  # The tasks whose STL baseline is learnable alone in every seed (eval.json's
  # learnable_alone); None when a baseline's eval.json does not say.
  learnable: frozenset[str] | None = None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std); std 0 for a single value."""
  values = list(values)
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def median_step_time(records: Sequence[dict]) -> float | None:
  """The median 'step_time' of a metrics.jsonl, without the first interval (it includes
  compilation) unless it is the only one."""
  times = [r['step_time'] for r in records if 'step_time' in r]
  return float(np.median(times[1:] if len(times) > 1 else times)) if times else None


def training_seconds(records: Sequence[dict]) -> float:
  """The training time a metrics.jsonl records: its 'seconds' restart when a run resumes from
  a checkpoint, so the sum of each stretch's last value (compilation and periodic
  evaluations included; the steps after the last checkpoint of a killed stretch are lost)."""
  total, last = 0.0, 0.0
  for seconds in (r['seconds'] for r in records):
    total += last if seconds < last else 0.0
    last = seconds
  return total + last


def delta_m_by_seed(results: SweepResults, method: str, tasks=None) -> dict[int, float]:
  """seed -> Δm% of the method against the STL baselines of the same seed, over `tasks`
  (default: all)."""
  keep = lambda d: {t: v for t, v in d.items() if tasks is None or t in tasks}
  return {seed: summary.delta_m(keep(values), keep(results.stl[seed]), keep(results.higher))
          for seed, values in results.mtl[method].items() if seed in results.stl}


def _rows(results: SweepResults) -> dict[str, dict[int, dict[str, float]]]:
  return {STL: results.stl, **results.mtl} if results.stl else dict(results.mtl)


def best_per_task(results: SweepResults) -> dict[str, str]:
  """task -> the row (a method, or STL) with the best mean primary metric."""
  best = {}
  for task, higher in results.higher.items():
    means = {row: mean_std([v[task] for v in seeds.values()])[0]
             for row, seeds in _rows(results).items()}
    best[task] = (max if higher else min)(means, key=means.get)
  return best


def _cell(values: Sequence[float], bold: bool = False, fmt: str = '.4f', sign: str = '') -> str:
  if not values:
    return '–'
  mean, std = mean_std(values)
  text = f'{mean:{sign}{fmt}} ± {std:{fmt}}'
  return f'**{text}**' if bold else text


def markdown(results: SweepResults, reference: str, title: str = 'Sweep report',
             notes: Sequence[str] = ()) -> str:
  """The report as markdown; `reference` is the method step-time overheads are relative to;
  `notes` are paragraphs after the opening one."""
  tasks = list(results.primary)
  best = best_per_task(results)
  ref_times = results.step_time.get(reference, {})
  arrow = {t: '↑' if results.higher[t] else '↓' for t in tasks}
  learnable = [t for t in tasks if results.learnable is not None and t in results.learnable]
  filtered = bool(learnable) and len(learnable) < len(tasks)
  header = ['method', 'seeds', *(f'{t} ({results.primary[t]} {arrow[t]})' for t in tasks),
            'Δm% vs STL', *(['Δm% over tasks learnable alone'] if filtered else []),
            'step time (ms)', f'overhead vs {reference}']
  lines = [f'# {title}', '',
           f'Mean ± std over seeds; **bold**: the best row per task. Δm% compares each seed '
           f'with the STL baselines of the same seed.', '',
           *(line for note in notes for line in (note, '')),
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row, seeds in _rows(results).items():
    cells = [row, str(len(seeds))]
    cells += [_cell([v[t] for v in seeds.values()], best[t] == row) for t in tasks]
    if row == STL:
      cells += ['0 (reference)'] * (1 + filtered) + ['–', '–']
    else:
      cells.append(_cell(list(delta_m_by_seed(results, row).values()), fmt='.2f', sign='+'))
      if filtered:
        cells.append(_cell(list(delta_m_by_seed(results, row, learnable).values()), fmt='.2f',
                           sign='+'))
      times = results.step_time.get(row, {})
      cells.append(_cell([1000 * s for s in times.values()], fmt='.1f'))
      ratios = [times[s] / ref_times[s] for s in times if s in ref_times]
      cells.append(_cell(ratios, fmt='.2f') + '×' if ratios else '–')
    lines.append('| ' + ' | '.join(cells) + ' |')
  if filtered:
    lines += ['', 'Not learnable alone (STL at chance in some seed, or in a text run no better '
              'than the base model, so a relative gain over it measures nothing): '
              + ', '.join(t for t in tasks if t not in learnable) + '.']
  lines += ['', '## Best method per task', '']
  lines += [f'- {t}: {best[t]}' for t in tasks]
  return '\n'.join(lines) + '\n'


def primary_values(metrics: Mapping[str, Mapping[str, float]], primary: Mapping[str, str],
                   prefix: str = '') -> dict[str, float]:
  """task -> its primary metric, from task -> metric -> value; `prefix` names a split other
  than the primary (mtl_jax.evaluation.evaluate.split_prefix)."""
  return {t: metrics[t][prefix + m] for t, m in primary.items()}


def tuning_section(search: Mapping) -> str:
  """The report's section on the tuned static baseline, from its search.json: how it was
  tuned, at what cost, and every point of the search (the chosen one in bold)."""
  weights = lambda w: ', '.join(f'{x:g}' for x in w)
  lines = ['## Tuned static weights', '',
           f'`{search["method"]}` trains static weights λ tuned on the {search["split"]} split '
           f'of seed {search["seed"]}; the table above reports the {search["report_split"]} '
           f'split. Search: one greedy pass of coordinate ascent from λ = 1, over the tasks in '
           f'order, each λ_i tried at every value of the grid ({weights(search["grid"])}) with '
           f'the others at the best so far; objective: {search["objective"]}. Cost: '
           f'{search["runs"]} runs, {search["training_seconds"]:.0f} s of training (their '
           f'metrics.jsonl, compilation included).', '',
           f'| λ ({", ".join(search["tasks"])}) | Δm% on {search["split"]} |', '|---|---|']
  for point in search['path']:
    bold = '**' if point['weights'] == search['weights'] else ''
    lines.append(f'| {bold}{weights(point["weights"])}{bold} | {point["delta_m"]:+.2f} |')
  return '\n'.join(lines) + '\n'


def untrained_section(rows: Mapping[str, Mapping[int, Mapping[str, float | None]]]) -> str:
  """The section of a text sweep on what no run trains on (jobs.sweep.untrained_rows): per
  row, each column's mean ± std over the seeds where it is defined."""
  columns = list(next(iter(next(iter(rows.values())).values())))
  lines = ['## Held-out tasks and general text (zero-shot: never trained)', '',
           'Rows: the untrained base model, the mean over the single-task models, each '
           'method\'s MTL model. A cluster\'s gain is Δm% over its tasks against the base model '
           '(tasks whose base value is 0 left out); the general text is config.text.general.',
           '', '| row | seeds | ' + ' | '.join(columns) + ' |',
           '|' + '---|' * (len(columns) + 2)]
  for row, seeds in rows.items():
    cells = [_cell([v[c] for v in seeds.values() if v[c] is not None]) for c in columns]
    lines.append(f'| {row} | {len(seeds)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
