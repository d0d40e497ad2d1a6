"""Training rows read and tokenised on demand, so a process reads only the rows it feeds.

Each home dataset is a random-access sequence of Examples: a TFDS data source mapped by
grain (a record is read when indexed), or a list. A fit asks for the rows its process will
gather over its steps (mtl_jax.data.pipeline.train_batches); those are read and tokenised
once, with the labels of every task of the run, and kept: the fits that follow (per-task
baselines, fine-tuning) reuse them, so every fit reads exactly the tokens the first did.
"""

from collections.abc import Sequence

import jax
import numpy as np

from mtl_jax.data.features import Example, concat_tables, encode_examples
from mtl_jax.tasks import Task
from mtl_jax.train import progress


class TrainRows:
  """The run's home datasets: `fill` reads and tokenises rows the first time they are
  wanted, `table` hands them out. `carries[h]`: the names of the run's tasks that home
  dataset h has labels of."""

  def __init__(self, names: Sequence[str], homes: Sequence[Sequence[Example]],
               carries: Sequence[frozenset[str]], tasks: Sequence[Task], tokenizer,
               seq_len: int):
    self.names, self.homes, self.carries = tuple(names), tuple(homes), tuple(carries)
    self.tasks, self.tokenizer, self.seq_len = tuple(tasks), tokenizer, seq_len
    self.sizes = tuple(len(h) for h in self.homes)
    # Per home: the sorted ids of the rows tokenised so far, and their table (None: none).
    self._done: list[tuple[np.ndarray, dict | None]] = [
        (np.zeros(0, np.int64), None) for _ in self.homes]

  def read(self, home: int) -> np.ndarray:
    """The ids of home dataset `home`'s rows read so far, sorted."""
    return self._done[home][0]

  def fill(self, wanted: Sequence[np.ndarray]):
    """Reads and tokenises the rows of `wanted[h]` (ids in home dataset h) not read yet."""
    missing = [np.setdiff1d(rows, self.read(h)) for h, rows in enumerate(wanted)]
    todo = [h for h, rows in enumerate(missing) if len(rows)]
    with progress.bar(sum(len(missing[h]) for h in todo), 'tokenise', unit='row') as bar:
      for h in todo:
        rows, home = missing[h], self.homes[h]
        new = encode_examples([home[int(i)] for i in rows], self.tasks, self.tokenizer,
                              self.seq_len, f'train split, {self.names[h]} examples', rows)
        ids, table = self._done[h]
        if table is not None:
          ids, new = np.concatenate([ids, rows]), concat_tables([table, new])
          order = np.argsort(ids, kind='stable')
          ids, new = ids[order], jax.tree.map(lambda a: a[order], new)
        else:
          ids = rows
        self._done[h] = (ids, new)
        bar.update(len(rows))

  def table(self, home: int, rows: np.ndarray) -> dict:
    """Home dataset `home`'s `rows` (ids, all read by `fill`), labelled for the run's tasks."""
    ids, table = self._done[home]
    where = np.searchsorted(ids, rows)
    if table is None or (ids[np.minimum(where, len(ids) - 1)] != rows).any():
      raise KeyError(f'Rows of {self.names[home]!r} asked for before fill() read them.')
    return jax.tree.map(lambda a: a[where], table)
