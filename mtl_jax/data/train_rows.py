"""Training rows read and tokenised on demand, so a process reads only the rows it feeds.

Each home dataset is a random-access sequence of Examples: a TFDS data source mapped by
grain (a record is read when indexed), or a list. A fit asks for the rows its process will
gather over its steps (mtl_jax.data.pipeline.train_batches); those are read and tokenised
once, with the labels of every task of the run, and kept: the fits that follow (per-task
baselines, fine-tuning) reuse them, so every fit reads exactly the tokens the first did.
"""

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mtl_jax.data.features import Example, concat_tables, encode_examples
from mtl_jax.tasks import Task
from mtl_jax import progress


def labelled_rows(fraction: float, size: int) -> int:
  """How many leading rows of a home dataset of `size` rows keep a task's labels under
  config.data.label_fraction (at least one)."""
  return max(1, math.ceil(fraction * size))


class TrainRows:
  """The run's home datasets: `table` reads and tokenises a row the first time it is
  asked for. `carries[h]`: the names of the run's tasks that home dataset h has labels
  of. `label_fraction[task]` (config.data.label_fraction): the task keeps its labels on
  the first labelled_rows(fraction, size) rows of every home dataset, and the rest are
  unlabelled for it (a home's rows are independent draws, so the prefix is a random
  subset): a scarce task beside tasks that label every row."""

  def __init__(self, names: Sequence[str], homes: Sequence[Sequence[Example]],
               carries: Sequence[frozenset[str]], tasks: Sequence[Task], tokenizer,
               seq_len: int, label_fraction: Mapping[str, float] | None = None):
    self.names, self.homes, self.carries = tuple(names), tuple(homes), tuple(carries)
    self.tasks, self.tokenizer, self.seq_len = tuple(tasks), tokenizer, seq_len
    self.sizes = tuple(len(h) for h in self.homes)
    self.label_fraction = dict(label_fraction or {})
    # Per home: the sorted ids of the rows tokenised so far, and their table (None: none).
    self._done: list[tuple[np.ndarray, dict | None]] = [
        (np.zeros(0, np.int64), None) for _ in self.homes]

  def read(self, home: int) -> np.ndarray:
    """The ids of home dataset `home`'s rows read so far, sorted."""
    return self._done[home][0]

  def table(self, home: int, rows: np.ndarray) -> dict:
    """Home dataset `home`'s `rows` (ids), labelled for the run's tasks; reads and
    tokenises those not read before."""
    missing = np.setdiff1d(rows, self.read(home))
    if len(missing):
      self._done[home] = self._with(home, missing)
    ids, table = self._done[home]
    return jax.tree.map(lambda a: a[np.searchsorted(ids, rows)], table)

  def _with(self, home: int, missing: np.ndarray) -> tuple[np.ndarray, dict]:
    """Home dataset `home`'s (ids, table) once rows `missing` are read and tokenised."""
    with progress.bar(len(missing), f'tokenise {self.names[home]}', unit='row') as bar:
      new = encode_examples([self.homes[home][int(i)] for i in missing], self.tasks,
                            self.tokenizer, self.seq_len,
                            f'train split, {self.names[home]} examples', missing)
      for task, fraction in self.label_fraction.items():
        kept = missing < labelled_rows(fraction, self.sizes[home])
        masks = new['label_masks'][task]
        masks *= kept.reshape((-1,) + (1,) * (masks.ndim - 1))
      bar.update(len(missing))
    ids, table = self._done[home]
    if table is None:
      return missing, new
    ids, table = np.concatenate([ids, missing]), concat_tables([table, new])
    order = np.argsort(ids, kind='stable')
    return ids[order], jax.tree.map(lambda a: a[order], table)
