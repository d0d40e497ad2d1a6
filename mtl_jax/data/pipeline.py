"""Config -> feature tables -> a stream of static-shape training batches.

Examples are tokenised once into numpy tables (mtl_jax.data.features); each step's batch is
a gather of rows chosen by the mixture sampler from (seed, step) alone, served by a grain
MapDataset indexed by step. So batch k is the same whenever it is asked for: runs are
reproducible and resume exactly.
"""

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import numpy as np

from mtl_jax.data import builtin_tfds, local_source, tfds_source
from mtl_jax.data.features import Example, concat_tables, encode_examples, num_rows
from mtl_jax.data.mixture import mixture_probabilities, sample_grouped_rows, sample_rows
from mtl_jax.data.tokenizer import learnt_vocabulary, load_pretrained_tokenizer, load_wordpiece
from mtl_jax.evaluation.metrics import get_metric
from mtl_jax.tasks import Task
from mtl_jax.tasks.builtin import SOURCE as BUILTIN_SOURCE
from mtl_jax.train import progress


class TaskData(NamedTuple):
  train: dict  # all training rows, one table, grouped by home dataset ('domain': its index)
  train_sizes: tuple[int, ...]  # rows of each home dataset, in table order
  train_names: tuple[str, ...]  # the home datasets (the mixture's components)
  tasks: tuple[str, ...]  # the run's tasks, in order
  eval: dict[str, dict[str, dict]]  # task -> validation split -> table, primary split first
  vocab_size: int
  skipped: tuple[str, ...] = ()  # 'file:line: reason' of each malformed local row skipped
  tokenizer: Any = None  # what made the tables: it encodes other text (test splits) alike


class _Examples(NamedTuple):
  """One source's examples before tokenisation."""
  train: dict[str, list[Example]]  # home dataset -> its training examples
  eval: dict[str, dict[str, list[Example]]]  # task -> validation split -> examples
  skipped: tuple[str, ...] = ()


def default_data_dir() -> str:
  return os.path.join(os.path.expanduser('~'), '.cache', 'mtl_jax')


def _builtin_examples(data_cfg, tasks: Sequence[Task], data_dir: str) -> _Examples:
  """Every home dataset of the suite (a sentence carries labels of several tasks)."""
  suite_cfg = _suite_config(data_cfg)
  split_sources = builtin_tfds.data_sources(suite_cfg, data_dir)
  validation = builtin_tfds.load_split(split_sources['validation'])
  return _Examples(builtin_tfds.load_split(split_sources['train']),
                   {t.name: {'validation': validation[t.name]} for t in tasks})


def _tfds_examples(data_cfg, task: Task, data_dir: str) -> _Examples:
  data = tfds_source.tfds_data(task)
  read = lambda split: tfds_source.read_split(task, split, data_dir, data_cfg.download)
  return _Examples({task.name: read(data.train)} if data.train else {},
                   {task.name: {split: read(split) for split in data.eval}})


def _local_examples(data_cfg, task: Task, spec: local_source.LocalSpec) -> _Examples:
  bad_rows = data_cfg.bad_rows
  read = {split: local_source.read_split(task, spec, split, bad_rows)
          for split in ('train', *spec.eval_splits) if split in spec.paths}
  skipped = tuple(where for _, rows in read.values() for where in rows)
  return _Examples({task.name: read['train'][0]} if 'train' in read else {},
                   {task.name: {split: read[split][0] for split in spec.eval_splits}}, skipped)


def _suite_config(data_cfg) -> builtin_tfds.SuiteConfig:
  return builtin_tfds.suite_config(data_cfg.train_size, data_cfg.eval_size,
                                   data_cfg.relatedness, data_cfg.seed)


def _tokenizer(data_cfg, train: dict[str, list[Example]], builtin_only: bool, data_dir: str):
  """config.data.vocabulary: a pretrained tokenizer's folder, or '' to learn a WordPiece
  vocabulary: the built-in suite's own, or one from the run's training text."""
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


def load_task_data(data_cfg: ml_collections.ConfigDict, tasks: Sequence[Task]) -> TaskData:
  """Tokenised train and validation tables for the run's tasks, from any mix of sources.

  A task's examples come from config.data.local.<task> when that is given, else from its
  spec's source: the built-in suite or TFDS (docs/datasets.md). The mixture's components
  are the home datasets that carry a label of at least one of the run's tasks: each TFDS or
  local task's training file is one; in the built-in suite a sentence is labelled for every
  single-sentence task, so a task alone (STL) trains on exactly the labelled rows that it
  sees in MTL.
  """
  data_dir = data_cfg.data_dir or default_data_dir()
  local = local_source.local_specs(data_cfg)
  builtin = [t for t in tasks if t.name not in local and t.source == BUILTIN_SOURCE]
  sources = [_builtin_examples(data_cfg, builtin, data_dir)] if builtin else []
  for task in tasks:
    if task.name in local:
      sources.append(_local_examples(data_cfg, task, local[task.name]))
    elif task.source != BUILTIN_SOURCE:
      sources.append(_tfds_examples(data_cfg, task, data_dir))
  train = {home: ex for source in sources for home, ex in source.train.items()}
  validation = {task: splits for source in sources for task, splits in source.eval.items()}
  for task in tasks:
    if not validation[task.name]:
      raise ValueError(f'Task {task.name!r} has no validation split to score it on.')
  skipped = tuple(where for source in sources for where in source.skipped)
  if skipped:
    logging.warning('Skipped %d malformed row(s) (config.data.bad_rows=\'skip\'), first: %s',
                    len(skipped), '; '.join(skipped[:3]))
  tokenizer = _tokenizer(data_cfg, train, len(builtin) == len(tasks), data_dir)

  with progress.bar(len(train) + sum(len(splits) for splits in validation.values()),
                    'tokenise', unit='table') as bar:
    def encode(examples, where):
      table = encode_examples(examples, tasks, tokenizer, data_cfg.seq_len, where)
      bar.update()
      return table

    train_tables, names = [], []
    for home, examples in train.items():
      table = encode(examples, f'train split, {home} examples') if examples else None
      if table is not None and any(m.any() for m in table['label_masks'].values()):
        table['domain'] = np.full(num_rows(table), len(names), np.int32)
        train_tables.append(table)
        names.append(home)
    untrained = [t.name for t in tasks
                 if not any(table['label_masks'][t.name].any() for table in train_tables)]
    if untrained:
      raise ValueError(f'Tasks {untrained} have no labelled training examples (glue_ax is '
                       f'evaluation only; a local task needs a \'train\' path).')
    eval_tables = {t.name: {split: _with_groups(t, examples, encode(
                                examples, f'{t.source} {split} split, {t.name}'))
                            for split, examples in validation[t.name].items()} for t in tasks}
  return TaskData(concat_tables(train_tables), tuple(num_rows(t) for t in train_tables),
                  tuple(names), tuple(t.name for t in tasks), eval_tables,
                  tokenizer.get_vocab_size(), skipped, tokenizer)


def _labels_of(table: dict, task: str, rows=slice(None)) -> dict:
  """`table`'s `rows` with the labels of `task` alone."""
  only = {k: v[rows] for k, v in table.items() if k not in ('labels', 'label_masks')}
  only['labels'] = {task: table['labels'][task][rows]}
  only['label_masks'] = {task: table['label_masks'][task][rows]}
  return only


def task_view(data: TaskData, task: str) -> TaskData:
  """What `task` alone trains and is scored on, cut from a multi-task TaskData: the home
  datasets that carry its labels, its labels only, and its validation tables. The tokens
  are the multi-task run's, so single-task baselines and per-task fine-tuning read exactly
  the inputs, and the vocabulary, that MTL did."""
  labelled = data.train['label_masks'][task]
  labelled = labelled.reshape(labelled.shape[0], -1).any(axis=1)
  keep = [i for i in range(len(data.train_names)) if labelled[data.train['domain'] == i].any()]
  table = _labels_of(data.train, task, np.isin(data.train['domain'], keep))
  table['domain'] = np.searchsorted(keep, table['domain']).astype(np.int32)
  return data._replace(train=table, train_sizes=tuple(data.train_sizes[i] for i in keep),
                       train_names=tuple(data.train_names[i] for i in keep), tasks=(task,),
                       eval={task: {split: _labels_of(t, task)
                                    for split, t in data.eval[task].items()}})


class _BatchAt:
  """step -> this process's rows of the global batch: picklable, so grain may run it in
  worker threads or processes."""

  def __init__(self, table, sizes, probabilities, seed, batch_size, positions):
    self.table, self.sizes, self.probabilities = table, sizes, probabilities
    self.seed, self.batch_size, self.positions = seed, batch_size, positions

  def global_rows(self, step: int) -> np.ndarray:
    return sample_rows(self.seed, step, self.batch_size, self.sizes, self.probabilities)

  def __call__(self, step: int) -> dict:
    rows = self.global_rows(step)[self.positions]
    return jax.tree.map(lambda a: a[rows], self.table)


class _GroupedBatchAt(_BatchAt):
  """step -> N equal groups of rows, group i from task i's own dataset, labelled for it only."""

  def __init__(self, table, sizes, components, tasks, seed, batch_size, positions):
    super().__init__(table, sizes, None, seed, batch_size, positions)
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
  (mtl_jax.parallel.distributed); by default all of them. Only those rows are gathered.
  """
  positions = np.arange(batch_size) if positions is None else positions
  if sampling.strategy == 'grouped':
    missing = [t for t in data.tasks if t not in data.train_names]
    if missing:
      raise ValueError(f'Grouped sampling draws each task from its own dataset; tasks '
                       f'{missing} have none among {data.train_names}.')
    batch_at = _GroupedBatchAt(data.train, data.train_sizes,
                               [data.train_names.index(t) for t in data.tasks], data.tasks,
                               seed, batch_size, positions)
  else:
    probabilities = mixture_probabilities(data.train_sizes, sampling.strategy,
                                          sampling.temperature)
    batch_at = _BatchAt(data.train, data.train_sizes, probabilities, seed, batch_size,
                        positions)
  steps = grain.MapDataset.range(start_step, num_steps).map(batch_at)
  return iter(steps.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def eval_batches(table: dict, batch_size: int) -> Iterator[tuple[dict, int]]:
  """(batch, number of real rows): the last batch is padded to the static batch size."""
  n = num_rows(table)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = min(batch_size, n - start)
    yield jax.tree.map(lambda a: a[np.minimum(rows, n - 1)], table), valid

