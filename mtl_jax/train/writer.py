"""Where a run's metrics go: one small interface, and only process 0 writes."""

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Protocol

from mtl_jax.parallel.distributed import is_writer


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


class NullWriter:
  """What the other processes of a multi-host run write to."""

  def write(self, record: dict) -> None:
    del record


@contextlib.contextmanager
def metric_writer(workdir: str) -> Iterator[MetricWriter]:
  """workdir/metrics.jsonl on process 0; a writer that drops everything elsewhere."""
  if not is_writer():
    yield NullWriter()
    return
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    yield JsonlWriter(f)
