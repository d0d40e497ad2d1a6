"""Config -> feature tables -> a stream of static-shape training batches.

Each step's batch is a gather of rows chosen by the mixture sampler from (seed, step) alone,
served by a grain MapDataset indexed by step. So batch k is the same whenever it is asked
for: runs are reproducible and resume exactly, and every process of a multi-host run
agrees on it without talking to the others. Validation examples are tokenised into numpy
tables (mtl_jax.data.features) up front; a training row is read and tokenised only when a
fit first needs it (mtl_jax.data.train_rows), so a process reads only the rows its devices
are fed.
"""

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import numpy as np

from mtl_jax.data import builtin_tfds, local_source, tfds_source
from mtl_jax.data.features import (INPUT_KEYS, Example, carries, concat_tables, encode_examples,
                                   num_rows)
from mtl_jax.data.mixture import mixture_probabilities, sample_grouped_rows, sample_rows
from mtl_jax.data.tokenizer import learnt_vocabulary, load_pretrained_tokenizer, load_wordpiece
from mtl_jax.data.train_rows import TrainRows, labelled_rows
from mtl_jax.metrics import get_metric
from mtl_jax.tasks import Task, TaskKind, num_choices
from mtl_jax.tasks.builtin import SOURCE as BUILTIN_SOURCE, eval_splits as builtin_eval_splits
from mtl_jax import progress


class TaskData(NamedTuple):
  """What a fit trains and is scored on. Its training rows are the concatenation, in
  order, of its home datasets (the mixture's components): `train_homes` of `train`."""
  train: TrainRows  # every home dataset of the run, read and tokenised on demand
  train_homes: tuple[int, ...]  # this fit's home datasets: indices into train's
  tasks: tuple[str, ...]  # this fit's tasks, in order
  eval: dict[str, dict[str, dict]]  # task -> scored split -> table, primary split first
  vocab_size: int
  skipped: tuple[str, ...] = ()  # 'file:line: reason' of each malformed local row skipped
  tokenizer: Any = None  # what made the tables: it encodes other text (test splits) alike
  # regression task -> (mean, std) of its training targets (config.data.standardize_targets)
  target_scales: dict[str, tuple[float, float]] | None = None

  @property
  def train_sizes(self) -> tuple[int, ...]:
    """Rows of each of this fit's home datasets."""
    return tuple(self.train.sizes[home] for home in self.train_homes)

  @property
  def train_names(self) -> tuple[str, ...]:
    return tuple(self.train.names[home] for home in self.train_homes)


class _Examples(NamedTuple):
  """One source's examples before tokenisation."""
  train: dict[str, Sequence[Example]]  # home dataset -> its training examples (random access)
  carries: dict[str, frozenset[str]]  # home dataset -> the tasks it has labels of
  eval: dict[str, dict[str, list[Example]]]  # task -> validation split -> examples
  skipped: tuple[str, ...] = ()


def default_data_dir() -> str:
  return os.path.join(os.path.expanduser('~'), '.cache', 'mtl_jax')


def _carried(tasks: Sequence[Task], examples: Sequence[Example]) -> frozenset[str]:
  return frozenset(t.name for t in tasks if any(carries(t, ex) for ex in examples))


def _builtin_examples(data_cfg, tasks: Sequence[Task], data_dir: str) -> _Examples:
  """Every home dataset of the suite (a sentence carries labels of several tasks), and
  each task's config.data.eval_splits in that order. The suite is small and generated, so it
  is read whole, which tells which tasks each home dataset has labels of."""
  suite_cfg = _suite_config(data_cfg)
  split_sources = builtin_tfds.data_sources(suite_cfg, data_dir)
  scored = {split: builtin_tfds.load_split(split_sources[split])
            for split in builtin_eval_splits(data_cfg)}
  train = builtin_tfds.load_split(split_sources['train'])
  return _Examples(train, {home: _carried(tasks, ex) for home, ex in train.items()},
                   {t.name: {split: examples[t.name] for split, examples in scored.items()}
                    for t in tasks})


def _tfds_examples(data_cfg, task: Task, data_dir: str) -> _Examples:
  """A TFDS task's training split stays unread (each record carries the task's label);
  its validation splits are read."""
  data = tfds_source.tfds_data(task)
  examples = lambda split: tfds_source.split_examples(task, split, data_dir, data_cfg.download)
  return _Examples({task.name: examples(data.train)} if data.train else {},
                   {task.name: frozenset({task.name})},
                   {task.name: {split: list(examples(split)) for split in data.eval}})


def _local_examples(data_cfg, task: Task, spec: local_source.LocalSpec) -> _Examples:
  bad_rows = data_cfg.bad_rows
  read = {split: local_source.read_split(task, spec, split, bad_rows)
          for split in ('train', *spec.eval_splits) if split in spec.paths}
  skipped = tuple(where for _, rows in read.values() for where in rows)
  train = {task.name: read['train'][0]} if 'train' in read else {}
  return _Examples(train, {home: _carried((task,), ex) for home, ex in train.items()},
                   {task.name: {split: read[split][0] for split in spec.eval_splits}}, skipped)


def _suite_config(data_cfg) -> builtin_tfds.SuiteConfig:
  # A run's config.json from before suite versions existed ran version 1.
  return builtin_tfds.suite_config(data_cfg.train_size, data_cfg.eval_size, data_cfg.relatedness,
                                   data_cfg.seed, data_cfg.get('suite_version', 1))


def _tokenizer(data_cfg, train: dict[str, Sequence[Example]], builtin_only: bool,
               data_dir: str):
  """config.data.vocabulary: a pretrained tokenizer's folder, or '' to learn a WordPiece
  vocabulary: the built-in suite's own, or one from the run's training text (which reads
  all of it, on every process)."""
  if data_cfg.vocabulary:
    return load_pretrained_tokenizer(data_cfg.vocabulary, data_cfg.seq_len)
  if builtin_only:
    path = builtin_tfds.vocabulary(_suite_config(data_cfg), data_dir, data_cfg.vocab_size)
  else:
    texts = (text for examples in train.values() for ex in examples for text in ex.inputs)
    path = learnt_vocabulary(texts, data_cfg.vocab_size, data_dir)
  return load_wordpiece(path, data_cfg.seq_len)


def _with_groups(task: Task, examples: list[Example], table: dict) -> dict:
  """`table` with a 'group' column, each row's group, when the task's records have one
  (tfds_source.group_ids); a task whose metrics need groups and has none is an error."""
  groups = tfds_source.group_ids(task, examples)
  if groups is not None:
    return {**table, 'group': groups}
  grouped = [m for m in task.metrics if 'group' in get_metric(m).inputs]
  if grouped:
    raise ValueError(f'Task {task.name!r}: metric(s) {grouped} score groups of rows, named by '
                     f'the TFDS records\' idx; its validation examples have none (read it from '
                     f'TFDS rather than config.data.local.{task.name}).')
  return table


def _read_sources(data_cfg: ml_collections.ConfigDict, tasks: Sequence[Task], data_dir: str
                  ) -> list[_Examples]:
  """The examples of `tasks`, one _Examples per source: config.data.local.<task> when given,
  else the task spec's source (the built-in suite, read once for all its tasks, or TFDS)."""
  local = local_source.local_specs(data_cfg)
  builtin = [t for t in tasks if t.name not in local and t.source == BUILTIN_SOURCE]
  sources = [_builtin_examples(data_cfg, builtin, data_dir)] if builtin else []
  for task in tasks:
    if task.name in local:
      sources.append(_local_examples(data_cfg, task, local[task.name]))
    elif task.source != BUILTIN_SOURCE:
      sources.append(_tfds_examples(data_cfg, task, data_dir))
  return sources


class Labelled(NamedTuple):
  """A task's labelled examples: training (random access, read on demand) and its primary
  validation split's, with the malformed local rows skipped."""
  train: Sequence[Example]
  validation: list[Example]
  skipped: tuple[str, ...]


def labelled_examples(data_cfg: ml_collections.ConfigDict, tasks: Sequence[Task]
                      ) -> dict[str, Labelled]:
  """task -> its Labelled examples, from the sources load_task_data reads (a text run's
  templates make text-to-text conversations of them: mtl_jax.data.text_data)."""
  data_dir = data_cfg.data_dir or default_data_dir()
  out = {}
  for source in _read_sources(data_cfg, tasks, data_dir):
    for task in tasks:
      if task.name not in source.eval:
        continue
      homes = [source.train[h] for h, names in source.carries.items() if task.name in names]
      if len(homes) == 1 and not isinstance(homes[0], list):
        train = homes[0]  # a TFDS split, unread: each of its records carries the task
      else:
        train = [ex for home in homes for ex in home if carries(task, ex)]
      splits = source.eval[task.name]
      if not splits:
        raise ValueError(f'Task {task.name!r} has no validation split to score it on.')
      out[task.name] = Labelled(train, list(next(iter(splits.values()))), source.skipped)
  return out


def load_task_data(data_cfg: ml_collections.ConfigDict, tasks: Sequence[Task]) -> TaskData:
  """Tokenised train and validation tables for the run's tasks, from any mix of sources.

  A task's examples come from config.data.local.<task> when that is given, else from its
  spec's source: the built-in suite or TFDS (docs/datasets.md). The mixture's components
  are the home datasets that carry a label of at least one of the run's tasks: each TFDS or
  local task's training file is one; in the built-in suite a sentence is labelled for every
  single-sentence task, so a task alone (STL) trains on exactly the labelled rows that it
  sees in MTL. Training rows are read and tokenised later, by the fits that draw them.
  """
  data_dir = data_cfg.data_dir or default_data_dir()
  sources = _read_sources(data_cfg, tasks, data_dir)
  builtin = [t for t in tasks if t.name not in local_source.local_specs(data_cfg)
             and t.source == BUILTIN_SOURCE]
  train = {home: ex for source in sources for home, ex in source.train.items()}
  carried = {home: c for source in sources for home, c in source.carries.items()}
  validation = {task: splits for source in sources for task, splits in source.eval.items()}
  for task in tasks:
    if not validation[task.name]:
      raise ValueError(f'Task {task.name!r} has no validation split to score it on.')
  skipped = tuple(where for source in sources for where in source.skipped)
  if skipped:
    logging.warning('Skipped %d malformed row(s) (config.data.bad_rows=\'skip\'), first: %s',
                    len(skipped), '; '.join(skipped[:3]))
  tokenizer = _tokenizer(data_cfg, train, len(builtin) == len(tasks), data_dir)

  homes = [home for home, examples in train.items() if len(examples) and carried[home]]
  untrained = [t.name for t in tasks if not any(t.name in carried[home] for home in homes)]
  if untrained:
    raise ValueError(f'Tasks {untrained} have no labelled training examples (glue_ax is '
                     f'evaluation only; a local task needs a \'train\' path).')
  # Runs stored before the fields existed: every label kept, raw targets.
  fractions = dict(data_cfg.get('label_fraction', {}))
  rows = TrainRows(homes, [train[h] for h in homes], [carried[h] for h in homes], tasks,
                   tokenizer, data_cfg.seq_len, fractions)
  scales = (target_scales(tasks, [train[h] for h in homes], [carried[h] for h in homes],
                          fractions)
            if data_cfg.get('standardize_targets', False) else {})

  with progress.bar(sum(len(splits) for splits in validation.values()), 'tokenise',
                    unit='table') as bar:
    def encode(task, split, examples):
      table = encode_examples(examples, tasks, tokenizer, data_cfg.seq_len,
                              f'{task.source} {split} split, {task.name}')
      bar.update()
      return _with_groups(task, examples, table)

    eval_tables = {t.name: {split: encode(t, split, examples)
                            for split, examples in validation[t.name].items()} for t in tasks}
  return TaskData(rows, tuple(range(len(homes))), tuple(t.name for t in tasks), eval_tables,
                  tokenizer.get_vocab_size(), skipped, tokenizer, scales)


def _labelled(home: Sequence[Example], task: Task, label_fraction: Mapping[str, float]):
  """The examples of `home` that keep `task`'s labels (config.data.label_fraction)."""
  if task.name not in label_fraction:
    return home
  return itertools.islice(home, labelled_rows(label_fraction[task.name], len(home)))


def target_scales(tasks: Sequence[Task], homes: Sequence[Sequence[Example]],
                  carried: Sequence[frozenset[str]], label_fraction: Mapping[str, float]
                  ) -> dict[str, tuple[float, float]]:
  """Each regression task's (mean, std) over its training targets, as a standard scaler
  fits them (std with ddof 0; 1 if the targets are constant). Reads every training example
  it keeps labels of (label_fraction) in the home datasets that carry the task (a TFDS
  split record by record)."""
  scales = {}
  for task in tasks:
    if task.kind is not TaskKind.REGRESSION:
      continue
    values = np.array([ex.labels[task.name] for home, c in zip(homes, carried)
                       if task.name in c for ex in _labelled(home, task, label_fraction)
                       if carries(task, ex)], np.float64)
    std = float(values.std())
    scales[task.name] = (float(values.mean()), std if std > 0 else 1.0)
  return scales


def scaled_tasks(tasks: Sequence[Task], data: TaskData) -> tuple[Task, ...]:
  """`tasks` with the target scales of `data` (Task.target_scale): what a fit on `data`
  trains, predicts and evaluates with."""
  scales = data.target_scales or {}
  return tuple(dataclasses.replace(t, target_scale=scales[t.name]) if t.name in scales else t
               for t in tasks)


def _for_tasks(table: dict, tasks: Sequence[Task]) -> dict:
  """`table` with the labels of `tasks` alone, and only the inputs they read: a table of a
  run with a multiple-choice task holds C inputs per row, and any other task reads the
  first."""
  view = {k: v for k, v in table.items() if k not in ('labels', 'label_masks')}
  if num_choices(tasks) == 1 and table['input_ids'].ndim == 3:
    view.update({k: table[k][:, 0] for k in INPUT_KEYS})
  for key in ('labels', 'label_masks'):
    view[key] = {t.name: table[key][t.name] for t in tasks}
  return view


def _specs(data: TaskData) -> list[Task]:
  return [t for t in data.train.tasks if t.name in data.tasks]


def train_table(data: TaskData, rows: np.ndarray) -> dict:
  """The fit's training rows `rows` (sorted indices into the concatenation of its home
  datasets) as one table labelled for its tasks, with 'domain': each row's home dataset
  (its index in data.train_names). Reads and tokenises the rows not read before."""
  offsets = np.concatenate([[0], np.cumsum(data.train_sizes)]).astype(np.int64)
  domain = np.searchsorted(offsets, rows, side='right') - 1
  per_home = [rows[domain == d] - offsets[d] for d in range(len(data.train_homes))]
  table = concat_tables([data.train.table(home, per_home[d])
                         for d, home in enumerate(data.train_homes) if len(per_home[d])])
  table['domain'] = domain.astype(np.int32)
  return _for_tasks(table, _specs(data))


def task_view(data: TaskData, task: str) -> TaskData:
  """What `task` alone trains and is scored on, cut from a multi-task TaskData: the home
  datasets that carry its labels, its labels only, and its validation tables. The tokens
  are the multi-task run's, so single-task baselines and per-task fine-tuning read exactly
  the inputs, and the vocabulary, that MTL did."""
  keep = [d for d, home in enumerate(data.train_homes) if task in data.train.carries[home]]
  view = data._replace(train_homes=tuple(data.train_homes[d] for d in keep), tasks=(task,))
  return view._replace(eval={task: {split: _for_tasks(table, _specs(view))
                                    for split, table in data.eval[task].items()}})


class _BatchAt:
  """step -> this process's rows of the global batch: picklable, so grain may run it in
  worker threads or processes. `load` first reads the rows of the steps it will serve."""

  def __init__(self, sizes, probabilities, seed, batch_size, positions):
    self.sizes, self.probabilities = sizes, probabilities
    self.seed, self.batch_size, self.positions = seed, batch_size, positions
    self.rows, self.table = None, None  # sorted row indices, and their table

  def global_rows(self, step: int) -> np.ndarray:
    return sample_rows(self.seed, step, self.batch_size, self.sizes, self.probabilities)

  def local_rows(self, step: int) -> np.ndarray:
    return self.global_rows(step)[self.positions]

  def load(self, data: TaskData, steps: range):
    self.rows = np.unique(np.concatenate([self.local_rows(step) for step in steps]))
    self.table = train_table(data, self.rows)

  def __call__(self, step: int) -> dict:
    where = np.searchsorted(self.rows, self.local_rows(step))
    return jax.tree.map(lambda a: a[where], self.table)


class _GroupedBatchAt(_BatchAt):
  """step -> N equal groups of rows, group i from task i's own dataset, labelled for it only."""

  def __init__(self, sizes, components, tasks, seed, batch_size, positions):
    super().__init__(sizes, None, seed, batch_size, positions)
    self.components, self.tasks = components, tasks

  def global_rows(self, step: int) -> np.ndarray:
    return sample_grouped_rows(self.seed, step, self.batch_size, self.sizes, self.components)

  def __call__(self, step: int) -> dict:
    batch = super().__call__(step)
    group = np.repeat(np.arange(len(self.tasks)), self.batch_size // len(self.tasks))
    group = group[self.positions]
    for i, task in enumerate(self.tasks):
      mask = batch['label_masks'][task]
      batch['label_masks'][task] = mask * (group == i).reshape((-1,) + (1,) * (mask.ndim - 1))
    return batch


def train_batches(data: TaskData, sampling: ml_collections.ConfigDict, seed: int,
                  batch_size: int, start_step: int, num_steps: int,
                  positions: np.ndarray | None = None) -> Iterator[dict]:
  """Batches for steps [start_step, num_steps), prefetched in a background thread.

  `positions`: the rows of each global batch that this process feeds to its devices
  (mtl_jax.parallel.distributed); by default all of them. Only the training rows at those
  positions of these steps' batches are read and tokenised, before the first batch.
  """
  positions = np.arange(batch_size) if positions is None else positions
  if sampling.strategy == 'grouped':
    missing = [t for t in data.tasks if t not in data.train_names]
    if missing:
      raise ValueError(f'Grouped sampling draws each task from its own dataset; tasks '
                       f'{missing} have none among {data.train_names}.')
    batch_at = _GroupedBatchAt(data.train_sizes,
                               [data.train_names.index(t) for t in data.tasks], data.tasks,
                               seed, batch_size, positions)
  else:
    probabilities = mixture_probabilities(data.train_sizes, sampling.strategy,
                                          sampling.temperature, sampling.get('cap', 0))
    batch_at = _BatchAt(data.train_sizes, probabilities, seed, batch_size, positions)
  if start_step < num_steps:
    batch_at.load(data, range(start_step, num_steps))
    logging.info('Process %d reads %d of the %d training rows of %s.', jax.process_index(),
                 len(batch_at.rows), sum(data.train_sizes), ', '.join(data.train_names))
  steps = grain.MapDataset.range(start_step, num_steps).map(batch_at)
  return iter(steps.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def eval_batches(table: dict, batch_size: int) -> Iterator[tuple[dict, int]]:
  """(batch, number of real rows): the last batch is padded to the static batch size."""
  n = num_rows(table)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = min(batch_size, n - start)
    yield jax.tree.map(lambda a: a[np.minimum(rows, n - 1)], table), valid

