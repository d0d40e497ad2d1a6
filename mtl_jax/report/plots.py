"""The plots of one run, as PNG files in its workdir (docs/report.md).

Each plot is a pure function from what the run wrote (metrics.jsonl records, eval_curve.jsonl,
eval.json, representations.npz) to a matplotlib Figure, or None when the run lacks the data
(no diagnostics, no STL baselines, ...). `write_plots` saves those that exist.
"""

import json
import os
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use('Agg')  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from mtl_jax.report.representations import FILENAME as REPRESENTATIONS  # noqa: E402


def read_jsonl(path: str) -> list[dict]:
  """The records of a .jsonl file; [] when it does not exist."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def by_task(records: Sequence[dict], key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(steps, task -> values) of a per-task entry of the records that have it; None -> NaN."""
  rows = [r for r in records if key in r]
  tasks = list(rows[0][key]) if rows else []
  steps = np.array([r['step'] for r in rows])
  return steps, {t: np.array([np.nan if r[key].get(t) is None else r[key][t] for r in rows])
                 for t in tasks}


def _lines(ax, steps, values: dict[str, np.ndarray], title: str, ylabel: str):
  for task, ys in values.items():
    ax.plot(steps, ys, label=task, marker='.' if len(steps) < 20 else None)
  ax.set(title=title, xlabel='step', ylabel=ylabel)
  ax.legend(fontsize='small')


def training_curves(records: Sequence[dict], curve: Sequence[dict], primary: dict[str, str],
                    single: dict | None = None):
  """Left: each task's training loss. Right: each task's primary validation metric over
  eval_curve.jsonl (one point per evaluation; only the final one when eval_every is 0),
  with its STL baseline dashed when there is one."""
  steps, losses = by_task(records, 'task_losses')
  if not losses:
    return None
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  _lines(left, steps, losses, 'training loss per task', 'loss')
  left.set_yscale('log')
  eval_steps = np.array([r['step'] for r in curve])
  order = [t for t in losses if t in primary]  # the same task, the same colour, both panels
  metrics = {t: np.array([r['tasks'][t][primary[t]] for r in curve]) for t in order}
  _lines(right, eval_steps, metrics, 'validation: primary metric per task', 'metric')
  for line, task in zip(right.get_lines(), order):
    if single and task in single:
      right.axhline(single[task][primary[task]], color=line.get_color(), linestyle='--',
                    linewidth=0.8)
  fig.tight_layout()
  return fig


def task_weights(records: Sequence[dict]):
  """The effective weight λ_i of each task over training (None for a gradient aggregator,
  which defines no weights)."""
  steps, weights = by_task(records, 'task_weights')
  if not weights or all(np.isnan(w).all() for w in weights.values()):
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  _lines(ax, steps, weights, 'task weights', 'λ')
  fig.tight_layout()
  return fig


def phase_means(records: Sequence[dict], phases: int = 3
                ) -> tuple[list[str], list[str], list[np.ndarray]]:
  """(tasks, phase labels, mean cosine matrix of each phase): the logged cosine matrices
  split into `phases` consecutive, nearly equal groups of log points (early, ..., late)."""
  rows = [r for r in records if 'task_grad_cosine' in r]
  if not rows:
    return [], [], []
  tasks = list(rows[0]['task_grad_cosine'])
  groups = [g for g in np.array_split(np.arange(len(rows)), min(phases, len(rows))) if len(g)]
  labels = [f'steps {rows[g[0]]["step"]}–{rows[g[-1]]["step"]}' for g in groups]
  matrices = [np.mean([[[rows[i]['task_grad_cosine'][a][b] for b in tasks] for a in tasks]
                       for i in g], axis=0) for g in groups]
  return tasks, labels, matrices


def gradient_conflict(records: Sequence[dict], phases: int = 3):
  """Heatmaps of the per-task gradient cosine, averaged per phase of training; negative
  (red) entries are conflicting tasks. Needs weighting.diagnostics."""
  tasks, labels, matrices = phase_means(records, phases)
  if len(tasks) < 2:  # one task has no conflict to show
    return None
  fig, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices) + 1.5, 4.8),
                           squeeze=False, layout='constrained')
  for ax, label, matrix in zip(axes[0], labels, matrices):
    image = ax.imshow(matrix, cmap='RdBu', vmin=-1, vmax=1)
    ax.set(title=label, xticks=range(len(tasks)), yticks=range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=45, ha='right', fontsize='small')
    ax.set_yticklabels(tasks, fontsize='small')
    for (i, j), value in np.ndenumerate(matrix):
      ax.text(j, i, f'{value:.2f}', ha='center', va='center', fontsize='x-small')
  fig.colorbar(image, ax=axes[0].tolist(), label='gradient cosine')
  fig.suptitle('gradient conflict per phase')
  return fig


def pca_2d(x: np.ndarray) -> np.ndarray:
  """(n, D) -> (n, 2): the centred rows on their first two principal directions."""
  centred = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def tsne_2d(x: np.ndarray) -> np.ndarray:
  """(n, D) -> (n, 2) by t-SNE (scikit-learn), seeded so the plot repeats."""
  from sklearn.manifold import TSNE  # optional and slow: only on request
  return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), random_state=0,
              init='pca').fit_transform(x)


def representations(saved: dict, project: Callable[[np.ndarray], np.ndarray] = pca_2d,
                    name: str = 'PCA'):
  """The shared features of the validation sample before and after training, projected to
  2-D, coloured by task: tasks that separate by colour after training have task-specific
  features; mixed colours mean general ones."""
  if saved is None:
    return None
  fig, axes = plt.subplots(1, 2, figsize=(11, 5))
  for ax, when in zip(axes, ('start', 'end')):
    points = project(saved[when])
    for index, task in enumerate(saved['task_names']):
      rows = saved['task'] == index
      ax.scatter(points[rows, 0], points[rows, 1], s=8, alpha=0.7, label=str(task))
    ax.set(title=f'{"before" if when == "start" else "after"} training ({name})',
           xticks=[], yticks=[])
  axes[1].legend(fontsize='small', markerscale=2)
  fig.tight_layout()
  return fig


def task_gain(report: dict):
  """Bars of each task's relative gain (%) of MTL over its STL baseline, Δm% as a line."""
  if not report.get('per_task_delta'):
    return None
  tasks = list(report['per_task_delta'])
  gains = np.array([report['per_task_delta'][t] for t in tasks])
  fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(tasks)), 4.5))
  ax.bar(tasks, gains, color=np.where(gains >= 0, 'tab:green', 'tab:red'))
  ax.axhline(0, color='black', linewidth=0.8)
  ax.axhline(report['delta_m'], color='tab:blue', linestyle='--',
             label=f'Δm% = {report["delta_m"]:+.2f}')
  ax.set(title='MTL gain over single-task baselines', ylabel='relative gain (%)')
  ax.tick_params(axis='x', rotation=45)
  ax.legend()
  fig.tight_layout()
  return fig


def _load_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _load_npz(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with np.load(path) as saved:
    return dict(saved)


def figures(workdir: str, tsne: bool = False) -> dict[str, object]:
  """PNG file name -> Figure (or None: the run lacks what the plot needs)."""
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  report = _load_json(os.path.join(workdir, 'eval.json'))
  saved = _load_npz(os.path.join(workdir, REPRESENTATIONS))
  curve = read_jsonl(os.path.join(workdir, 'eval_curve.jsonl'))
  # An STL run's eval.json names no primary metric: a task's first metric is its primary.
  primary = report.get('primary_metric') or (
      {t: next(iter(m)) for t, m in curve[0]['tasks'].items()} if curve else {})
  out = {
      'curves.png': training_curves(records, curve, primary, report.get('single')),
      'task_weights.png': task_weights(records),
      'gradient_conflict.png': gradient_conflict(records),
      'representations_pca.png': representations(saved),
      'task_gain.png': task_gain(report),
  }
  if tsne:
    out['representations_tsne.png'] = representations(saved, tsne_2d, 't-SNE')
  return out


def write_plots(workdir: str, tsne: bool = False) -> dict[str, str | None]:
  """Writes the run's plots into `workdir`: file name -> its path, or None if skipped."""
  written = {}
  for name, fig in figures(workdir, tsne).items():
    written[name] = None
    if fig is not None:
      written[name] = os.path.join(workdir, name)
      fig.savefig(written[name], dpi=110)
      plt.close(fig)
  return written
