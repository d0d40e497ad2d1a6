"""Config -> feature tables -> a stream of static-shape training batches.

Examples are tokenised once into numpy tables (mtl_jax.data.features); each step's batch is
a gather of rows chosen by the mixture sampler from (seed, step) alone, served by a grain
MapDataset indexed by step. So batch k is the same whenever it is asked for: runs are
reproducible and resume exactly.
"""

import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import grain
import jax
import ml_collections
import numpy as np

from mtl_jax.data import builtin_tfds
from mtl_jax.data.features import concat_tables, encode_examples, num_rows
from mtl_jax.data.mixture import mixture_probabilities, sample_grouped_rows, sample_rows
from mtl_jax.data.tokenizer import load_wordpiece
from mtl_jax.tasks import Task
from mtl_jax.tasks.builtin import SOURCE as BUILTIN_SOURCE


class TaskData(NamedTuple):
  train: dict  # all training rows, one table, grouped by home dataset ('domain': its index)
  train_sizes: tuple[int, ...]  # rows of each home dataset, in table order
  train_names: tuple[str, ...]  # the home datasets (the mixture's components)
  tasks: tuple[str, ...]  # the run's tasks, in order
  eval: dict[str, dict]  # task -> its validation table
  vocab_size: int


def default_data_dir() -> str:
  return os.path.join(os.path.expanduser('~'), '.cache', 'mtl_jax')


def load_task_data(data_cfg: ml_collections.ConfigDict, tasks: Sequence[Task]) -> TaskData:
  """Tokenised train and validation tables for the run's tasks.

  The mixture's components are the home datasets that carry a label of at least one of the
  run's tasks. In the built-in suite a sentence is labelled for every single-sentence task,
  so a task alone (STL) trains on exactly the labelled rows that it sees in MTL.
  """
  sources = {t.source for t in tasks}
  if sources != {BUILTIN_SOURCE}:
    raise ValueError(f'Data sources {sorted(sources - {BUILTIN_SOURCE})} are not '
                     f'supported; the tasks must come from {BUILTIN_SOURCE!r}.')
  data_dir = data_cfg.data_dir or default_data_dir()
  suite_cfg = builtin_tfds.suite_config(data_cfg.train_size, data_cfg.eval_size,
                                        data_cfg.relatedness, data_cfg.seed)
  split_sources = builtin_tfds.data_sources(suite_cfg, data_dir)
  tokenizer = load_wordpiece(builtin_tfds.vocabulary(suite_cfg, data_dir, data_cfg.vocab_size),
                             data_cfg.seq_len)

  def encode(examples, where):
    return encode_examples(examples, tasks, tokenizer, data_cfg.seq_len, where)

  train_tables, names = [], []
  for home, examples in builtin_tfds.load_split(split_sources['train']).items():
    table = encode(examples, f'{BUILTIN_SOURCE} train split, {home} examples')
    if any(m.any() for m in table['label_masks'].values()):
      table['domain'] = np.full(num_rows(table), len(names), np.int32)
      train_tables.append(table)
      names.append(home)
  validation = builtin_tfds.load_split(split_sources['validation'])
  eval_tables = {t.name: encode(validation[t.name], f'{t.source} validation split, {t.name}')
                 for t in tasks}
  return TaskData(concat_tables(train_tables), tuple(num_rows(t) for t in train_tables),
                  tuple(names), tuple(t.name for t in tasks), eval_tables,
                  tokenizer.get_vocab_size())


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

