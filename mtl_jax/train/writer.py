"""Where a run's metrics go: one small interface, and only process 0 writes.

A record is one JSON-able dict with a 'step' entry. metrics.jsonl keeps it whole;
TensorBoard gets its numbers as scalars named by their path ('task_losses/pos',
'task_grad_cosine/pos/chunk'), since TensorBoard has no nested values.
"""

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Protocol

from mtl_jax.parallel.distributed import is_writer

TENSORBOARD_DIR = 'tensorboard'  # under the workdir, one subfolder per log


class MetricWriter(Protocol):
  def write(self, record: dict) -> None:
    """Records one step's metrics (a dict with a 'step' entry)."""


class JsonlWriter:
  """One JSON object per line, flushed per record, so a cut-short run keeps its log."""

  def __init__(self, file):
    self._file = file

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()


def flatten(tree: dict, sep: str = '/', prefix: str = '') -> dict:
  """{'a<sep>b': leaf} of a nested dict."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    out.update(flatten(value, sep, name + sep) if isinstance(value, dict) else {name: value})
  return out


def scalars(record: dict) -> dict[str, float]:
  """The record's numbers by slash-joined path, without 'step'; None and text are left out
  (a weight a gradient aggregator does not define is None)."""
  return {name: float(value) for name, value in flatten(record).items()
          if isinstance(value, (int, float)) and not isinstance(value, bool) and name != 'step'}


class TensorBoardWriter:
  """TensorBoard event files through tensorboardX (no TensorFlow), flushed per record."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    import tensorboardX  # only runs that ask for TensorBoard import it
    self._summary = tensorboardX.SummaryWriter(logdir=logdir, purge_step=purge_step)

  def write(self, record: dict) -> None:
    for name, value in scalars(record).items():
      self._summary.add_scalar(name, value, global_step=record['step'])
    self._summary.flush()

  def close(self) -> None:
    self._summary.close()


class FanOutWriter:
  """Writes each record to every one of `writers`."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = tuple(writers)

  def write(self, record: dict) -> None:
    for writer in self._writers:
      writer.write(record)


class NullWriter:
  """What the other processes of a multi-host run write to."""

  def write(self, record: dict) -> None:
    del record


def _records_until(path: str, step: int) -> list[str]:
  """The lines of the log at `path` up to and including `step`'s record. A run killed
  mid-write leaves a torn last line, after every step a checkpoint holds: reading stops
  there."""
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)['step'] > step:
          break
      except json.JSONDecodeError:
        break
      kept.append(line)
  return kept


@contextlib.contextmanager
def metric_writer(workdir: str, name: str = 'metrics', tensorboard: bool = False,
                  resume_step: int = 0) -> Iterator[MetricWriter]:
  """workdir/<name>.jsonl (and, with `tensorboard`, event files in
  workdir/tensorboard/<name>/) on process 0; a writer that drops everything elsewhere.

  `resume_step` > 0 (a run resumed from that step's checkpoint): the log keeps its records
  up to that step and the run appends to it, so it ends as an uninterrupted run's would;
  TensorBoard purges its events after that step.
  """
  if not is_writer():
    yield NullWriter()
    return
  path = os.path.join(workdir, f'{name}.jsonl')
  kept = _records_until(path, resume_step) if resume_step and os.path.exists(path) else []
  with open(path + '.tmp', 'w') as f:  # replaced in one step: a kill here loses nothing
    f.writelines(kept)
  os.replace(path + '.tmp', path)
  with open(path, 'a') as f:
    if not tensorboard:
      yield JsonlWriter(f)
      return
    board = TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR, name),
                              purge_step=resume_step + 1 if resume_step else None)
    try:
      yield FanOutWriter((JsonlWriter(f), board))
    finally:
      board.close()
