"""Runs the compiled predictor over each task's evaluation table and scores it."""

from collections.abc import Callable, Sequence

import numpy as np

from mtl_jax.data.features import num_rows
from mtl_jax.data.pipeline import eval_batches
from mtl_jax.metrics import compute_metrics
from mtl_jax.tasks import Task, TaskKind
from mtl_jax import progress


def predictions(predict_step: Callable, params, task: Task, table: dict, batch_size: int,
                bar=None) -> dict:
  """{'pred', 'label', 'mask', 'group'} over the whole table for one task ('group': the
  table's group of each row, None when it has none); `bar` (a progress bar) advances by one
  per batch."""
  preds = []
  for batch, valid in eval_batches(table, batch_size):
    preds.append(np.asarray(predict_step(params, batch)[task.name])[:valid])
    if bar is not None:
      bar.update()
  return {'pred': np.concatenate(preds), 'label': table['labels'][task.name],
          'mask': table['label_masks'][task.name] > 0, 'group': table.get('group')}


def score(task: Task, outputs: dict) -> dict[str, float]:
  """The task's metrics over its labelled units."""
  pred, label, mask = outputs['pred'], outputs['label'], outputs['mask']
  if task.kind is TaskKind.TAGGING:
    rows = mask.any(axis=1)
    inputs = {'pred': pred[rows], 'label': label[rows], 'mask': mask[rows]}
  else:
    group = outputs.get('group')
    inputs = {'pred': pred[mask], 'label': label[mask],
              'group': None if group is None else group[mask]}
  inputs.update(num_classes=task.num_labels, tag_names=task.label_names)
  return compute_metrics(task.metrics, inputs)


def split_prefix(split: str, splits: Sequence[str]) -> str:
  """What names a metric of `split` among a task's scored splits (primary first): nothing
  on the primary split, 'split/' on another."""
  return '' if split == splits[0] else f'{split}/'


def evaluate(predict_step: Callable, params, tasks: Sequence[Task],
             tables: dict[str, dict[str, dict]], batch_size: int) -> dict[str, dict[str, float]]:
  """task -> metrics on its evaluation tables (task -> split -> table, primary split first).

  The primary split's metrics keep their names; another split's are named 'split/metric'
  (split_prefix; MNLI: 'accuracy' on validation_matched, 'validation_mismatched/accuracy';
  the built-in suite with data.eval_splits=('validation', 'test'): 'test/accuracy').
  """
  results = {}
  batches = sum(-(-num_rows(table) // batch_size)
                for t in tasks for table in tables[t.name].values())
  with progress.bar(batches, 'evaluate', unit='batch') as bar:
    for task in tasks:
      results[task.name] = {}
      for split, table in tables[task.name].items():
        prefix = split_prefix(split, list(tables[task.name]))
        scores = score(task, predictions(predict_step, params, task, table, batch_size, bar))
        results[task.name].update({prefix + name: value for name, value in scores.items()})
  return results
