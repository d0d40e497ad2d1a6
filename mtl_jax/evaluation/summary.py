"""Multi-task results against single-task baselines: Δm% and a plain-text table.

Δm% (Maninis et al. 2019; Vandenhende et al. 2021) is the mean relative gain of the
multi-task model over the single-task baselines, one primary metric per task:

    Δm% = 100 / T · Σ_i (−1)^{l_i} (M_mtl,i − M_stl,i) / |M_stl,i|,

with l_i = 1 when lower is better for task i's metric. Positive means MTL is better.
"""

from collections.abc import Mapping

import numpy as np

from mtl_jax import metrics as metrics_lib

# A relative gain over a baseline that learnt nothing measures nothing. A task is learnable
# alone when its STL primary metric clears this bar: the majority-class rate + 0.05 for an
# accuracy, 0.5 for a correlation with real targets, 0.05 for Matthews' correlation.
LEARNABLE_BAR = {'pearson': 0.5, 'spearman': 0.5, 'matthews': 0.05}
ACCURACY_MARGIN = 0.05


def _check_same_tasks(mtl: Mapping[str, float], stl: Mapping[str, float],
                      higher_is_better: Mapping[str, bool]) -> None:
  if set(mtl) != set(stl):
    raise ValueError('MTL and STL results cover different tasks: only in MTL '
                     f'{sorted(set(mtl) - set(stl))}, only in STL '
                     f'{sorted(set(stl) - set(mtl))}.')
  missing = sorted(set(mtl) - set(higher_is_better))
  if missing:
    raise ValueError(f'higher_is_better has no entry for task(s) {missing}.')
  if not mtl:
    raise ValueError('No tasks to compare.')


def _relative_gain(task: str, mtl: float, stl: float, higher_is_better: bool) -> float:
  if stl == 0:
    raise ValueError(f'Task {task!r}: the STL baseline is 0, so the relative '
                     'gain is undefined.')
  sign = 1.0 if higher_is_better else -1.0
  return 100.0 * sign * (mtl - stl) / abs(stl)


def per_task_delta(mtl: Mapping[str, float], stl: Mapping[str, float],
                   higher_is_better: Mapping[str, bool]) -> dict[str, float]:
  """Relative gain in % of MTL over STL per task; positive means MTL is better.

  Args:
    mtl, stl: task -> value of its primary metric; the same tasks in both.
    higher_is_better: task -> whether higher values of its metric are better.

  Returns:
    task -> 100 (−1)^{l} (mtl − stl) / |stl|, in the order of `mtl`.
  """
  _check_same_tasks(mtl, stl, higher_is_better)
  return {t: _relative_gain(t, mtl[t], stl[t], higher_is_better[t]) for t in mtl}


def delta_m(mtl: Mapping[str, float], stl: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
  """Δm%: the mean of per_task_delta over the tasks (arguments as there)."""
  deltas = per_task_delta(mtl, stl, higher_is_better)
  return sum(deltas.values()) / len(deltas)


def gain_where_defined(after: Mapping[str, float], before: Mapping[str, float],
                       higher_is_better: Mapping[str, bool]) -> float | None:
  """Δm% of `after` over `before` over the tasks whose `before` is not 0 (a relative gain
  over 0 is undefined); None when none is: e.g. a held-out cluster's gain over the base
  model."""
  defined = [t for t in after if before[t] != 0]
  if not defined:
    return None
  return delta_m({t: after[t] for t in defined}, {t: before[t] for t in defined},
                 {t: higher_is_better[t] for t in defined})


def learnable_bar(metric: str, labels: np.ndarray, mask: np.ndarray) -> float | None:
  """The value `metric` must exceed for a task to count as learnable alone, given its
  validation labels and their mask (None: no bar is defined for the metric)."""
  if metric in ('accuracy', 'token_accuracy'):
    present = np.asarray(labels)[np.asarray(mask) > 0].astype(np.int64)
    return float(np.bincount(present).max() / len(present)) + ACCURACY_MARGIN
  return LEARNABLE_BAR.get(metric)


def _fmt_value(x: float | None) -> str:
  return '-' if x is None else f'{x:.4f}'


def format_table(mtl: Mapping[str, Mapping[str, float]],
                 stl: Mapping[str, Mapping[str, float]] | None,
                 primary: Mapping[str, str],
                 higher_is_better: Mapping[str, bool] | None = None,
                 learnable: Mapping[str, bool] | None = None,
                 columns: tuple[str, str] = ('MTL', 'STL')) -> str:
  """Renders MTL (and STL) results as a plain-text table followed by a Δm% line.

  One row per (task, metric), tasks in the order of `mtl`, each task's primary
  metric first and marked with '*'. Δ% is shown wherever both MTL and STL values
  exist and the STL value is non-zero ('n/a' otherwise). Δm% averages the primary
  metrics' Δ% over the tasks where it is defined; tasks left out are named on the
  line. With stl=None only the MTL column is shown.

  Args:
    mtl: task -> metric name -> value.
    stl: the same for the single-task baselines, or None.
    primary: task -> the metric used for Δm%; must be a key of mtl[task].
    higher_is_better: metric name -> direction; defaults to
      mtl_jax.metrics.HIGHER_IS_BETTER. Keyed by metric, not by task; a
      metric of a further validation split, 'split/metric', goes by 'metric'.
    learnable: task -> whether its STL baseline clears learnable_bar. When some task's
      does not, a second Δm% line averages over the learnable tasks only and names the
      others.
    columns: the two columns' headings (a text run's held-out tasks: MTL against the
      base model).
  """
  hib = metrics_lib.HIGHER_IS_BETTER if higher_is_better is None else higher_is_better
  for task in mtl:
    if task not in primary:
      raise ValueError(f'No primary metric given for task {task!r}.')
    if primary[task] not in mtl[task]:
      raise ValueError(f'Task {task!r}: primary metric {primary[task]!r} is not among '
                       f'its MTL metrics {list(mtl[task])}.')

  header = ['task', 'metric', columns[0]] + ([columns[1], 'Δ%'] if stl is not None else [])
  rows = []
  primary_mtl, primary_stl, primary_hib = {}, {}, {}
  left_out = []
  for task, values in mtl.items():
    names = [primary[task]] + [m for m in values if m != primary[task]]
    for name in names:
      is_primary = name == primary[task]
      row = [task, name + ('*' if is_primary else ''), _fmt_value(values[name])]
      if stl is not None:
        base = stl.get(task, {}).get(name)
        delta = 'n/a'
        if base is not None and base != 0:
          metric = name.rsplit('/', 1)[-1]  # 'split/metric': a further validation split
          if metric not in hib:
            raise ValueError(f'higher_is_better has no entry for metric {metric!r}.')
          delta = f'{_relative_gain(task, values[name], base, hib[metric]):+.2f}'
          if is_primary:
            primary_mtl[task], primary_stl[task] = values[name], base
            primary_hib[task] = hib[metric]
        elif is_primary:
          left_out.append(task)
        row += [_fmt_value(base), delta]
      rows.append(row)

  widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]

  def line(cells):
    # Text columns left-aligned, numbers right-aligned.
    out = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return ' | '.join(out).rstrip()

  lines = [line(header), '-+-'.join('-' * w for w in widths)]
  lines += [line(r) for r in rows]
  lines.append('')
  if stl is None:
    lines.append('Δm%: n/a (no single-task baselines)')
  elif not primary_mtl:
    lines.append(f'Δm%: n/a (no task has a usable STL baseline; left out: '
                 f'{", ".join(left_out)})')
  else:
    dm = delta_m(primary_mtl, primary_stl, primary_hib)
    text = f'Δm%: {dm:+.2f} over {len(primary_mtl)} task(s)'
    if left_out:
      text += f'; left out (no or zero STL baseline): {", ".join(left_out)}'
    lines.append(text)
    unlearnt = [t for t in primary_mtl if learnable is not None and not learnable[t]]
    kept = {t: v for t, v in primary_mtl.items() if t not in unlearnt}
    if unlearnt and kept:
      dm = delta_m(kept, {t: primary_stl[t] for t in kept}, {t: primary_hib[t] for t in kept})
      lines.append(f'Δm%: {dm:+.2f} over the {len(kept)} task(s) learnable alone; not '
                   f'learnable alone (STL not past its bar: chance, learnable_bar; in a text '
                   f'run, the base model): '
                   f'{", ".join(unlearnt)}')
  lines.append('* primary metric, used for Δm%')
  return '\n'.join(lines) + '\n'
