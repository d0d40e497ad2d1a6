"""Tasks read from local TSV, CSV or JSONL files, described by config.data.local.<task>.

A spec names the files of each split, the text field(s), the label field and either the
label values (classification, in class order) or regression. A registered task (say
'glue_cola') keeps its kind, labels and metrics and only takes its examples from the files,
so GLUE's own downloaded TSVs can be used; any other name defines a new task.

Splits: 'train' is trained on; splits named 'test...' are read without labels (predicted,
never scored); every other split is a validation set, 'validation' first, then by name.

TSV is split on tabs with no quoting (GLUE's files hold unbalanced quotes); CSV follows
RFC 4180 quoting (the csv module); JSONL is one JSON object per line. A malformed row (a
missing field, a label outside the list, a regression value that is not a finite number,
empty text, bytes that are not UTF-8) is an error naming file:line, or is skipped and
counted when config.data.bad_rows is 'skip'.
"""

import csv
import dataclasses
import json
import math
import re
from collections.abc import Iterator

import ml_collections

from mtl_jax import tasks as task_lib
from mtl_jax.data.features import Example
from mtl_jax.tasks import Task, TaskKind

FORMATS = ('tsv', 'csv', 'jsonl')
BAD_ROWS = ('error', 'skip')
SOURCE = 'local'
# Bytes that are not UTF-8 survive decoding with errors='surrogateescape' as U+DC80..U+DCFF.
_UNDECODABLE = re.compile('[\udc80-\udcff]')


class BadRow(ValueError):
  """A malformed row; the reader adds file:line."""


@dataclasses.dataclass(frozen=True)
class LocalSpec:
  """Attributes: see docs/datasets.md, 'Local files'."""
  format: str
  paths: dict[str, str]
  text_fields: tuple[str, ...]
  label_field: str
  labels: tuple[str, ...] = ()
  regression: bool = False
  header: bool = True
  columns: tuple[str, ...] = ()
  metrics: tuple[str, ...] = ()

  @property
  def eval_splits(self) -> tuple[str, ...]:
    named = sorted(s for s in self.paths if s != 'train' and not s.startswith('test'))
    return tuple(sorted(named, key=lambda s: s != 'validation'))


def _require(condition: bool, where: str, message: str):
  if not condition:
    raise ValueError(f'{where}: {message}')


def local_spec(name: str, cfg: ml_collections.ConfigDict) -> LocalSpec:
  """config.data.local.<name> -> LocalSpec; a bad field is named in the error."""
  where = f'config.data.local.{name}'
  fields = {f.name for f in dataclasses.fields(LocalSpec)}
  unknown = sorted(set(cfg) - fields)
  _require(not unknown, where, f'unknown field(s) {unknown}; known: {sorted(fields)}.')
  missing = sorted(f for f in ('format', 'paths', 'text_fields', 'label_field') if f not in cfg)
  _require(not missing, where, f'missing field(s) {missing}.')
  values = dict(cfg)
  values['paths'] = dict(cfg.paths)
  for key in ('text_fields', 'labels', 'columns', 'metrics'):
    values[key] = tuple(values.get(key, ()))
  spec = LocalSpec(**values)
  _require(spec.format in FORMATS, f'{where}.format', f'{spec.format!r} is not one of {FORMATS}.')
  _require(bool(spec.paths), f'{where}.paths', 'give at least one split: {split: file}.')
  _require(len(spec.text_fields) in (1, 2), f'{where}.text_fields',
           f'give 1 or 2 fields, got {list(spec.text_fields)}.')
  _require(spec.regression != bool(spec.labels), f'{where}.labels',
           'give the label values (classification) or regression=True, not both.')
  _require(len(set(spec.labels)) == len(spec.labels), f'{where}.labels',
           f'lists a value twice: {list(spec.labels)}.')
  _require(spec.format == 'jsonl' or spec.header or spec.columns, f'{where}.columns',
           'a file without a header needs its column names.')
  _require(spec.format != 'jsonl' or (spec.header and not spec.columns), f'{where}.columns',
           'JSONL rows name their fields; header and columns are for TSV and CSV.')
  return spec


def local_specs(data_cfg: ml_collections.ConfigDict) -> dict[str, LocalSpec]:
  """Every task of config.data.local, by name."""
  return {name: local_spec(name, data_cfg.local[name]) for name in data_cfg.local}


def local_task(name: str, spec: LocalSpec) -> Task:
  """The task the files feed: the registered one, checked against the spec, or a new one."""
  where = f'config.data.local.{name}'
  if name in task_lib.names():
    task = task_lib.get(name)
    _require(task.kind is not TaskKind.TAGGING, where, f'task {name!r} tags words; local '
             'files hold one label per text.')
    _require(spec.regression == (task.kind is TaskKind.REGRESSION), where,
             f'task {name!r} is {task.kind.value}; the spec says otherwise.')
    _require(spec.regression or len(spec.labels) == task.num_labels, f'{where}.labels',
             f'task {name!r} has {task.num_labels} classes {list(task.label_names)}; give '
             f'one file value per class, in that order.')
    _require(len(spec.text_fields) == len(task.input_fields), f'{where}.text_fields',
             f'task {name!r} reads {len(task.input_fields)} text(s).')
    _require(not spec.metrics, f'{where}.metrics', f'task {name!r} has its own metrics '
             f'{list(task.metrics)}.')
    return task
  if spec.regression:
    return Task(name, TaskKind.REGRESSION, 1, spec.text_fields, spec.label_field,
                spec.metrics or ('pearson', 'spearman'), SOURCE)
  return Task(name, TaskKind.CLASSIFICATION, len(spec.labels), spec.text_fields,
              spec.label_field, spec.metrics or ('accuracy',), SOURCE, label_names=spec.labels)


def _delimited_rows(path: str, spec: LocalSpec) -> Iterator[tuple[int, list[str]]]:
  """(first line number, cells) of each non-blank row of a TSV or CSV file."""
  with open(path, encoding='utf-8', errors='surrogateescape', newline='') as f:
    if spec.format == 'tsv':
      for line_no, line in enumerate(f, 1):
        line = line.rstrip('\r\n')
        if line:
          yield line_no, line.split('\t')
    else:
      reader, end = csv.reader(f), 0
      for cells in reader:
        start, end = end + 1, reader.line_num
        if cells:
          yield start, cells


def _records(path: str, spec: LocalSpec) -> Iterator[tuple[int, dict | BadRow]]:
  """(line number, field -> value) of each row, or the BadRow that it is."""
  if spec.format == 'jsonl':
    with open(path, encoding='utf-8', errors='surrogateescape') as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          yield line_no, BadRow(f'not valid JSON ({e.msg})')
          continue
        yield line_no, (record if isinstance(record, dict)
                        else BadRow(f'a JSON {type(record).__name__}, not an object'))
    return
  rows = _delimited_rows(path, spec)
  columns = spec.columns
  if spec.header:
    header = next(rows, None)
    if header is None:
      return
    columns = tuple(header[1])
  for line_no, cells in rows:
    yield line_no, (dict(zip(columns, cells)) if len(cells) == len(columns) else
                    BadRow(f'{len(cells)} columns where the header names {len(columns)}'))


def _field(record: dict, field: str):
  if field not in record:
    raise BadRow(f'no field {field!r}')
  return record[field]


def _text(record: dict, field: str) -> str:
  value = _field(record, field)
  if not isinstance(value, str):
    raise BadRow(f'field {field!r} is {type(value).__name__}, not text')
  if _UNDECODABLE.search(value):
    raise BadRow(f'field {field!r} is not valid UTF-8')
  if not value.strip():
    raise BadRow(f'field {field!r} is empty')
  return value


def _label(record: dict, spec: LocalSpec) -> int | float:
  value = _field(record, spec.label_field)
  if spec.regression:
    try:
      number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
      number = math.nan
    if not math.isfinite(number):
      raise BadRow(f'label {value!r} is not a finite number')
    return number
  text = value if isinstance(value, str) else json.dumps(value)  # JSON true -> 'true'
  if text not in spec.labels:
    raise BadRow(f'label {text!r} is not one of {list(spec.labels)}')
  return spec.labels.index(text)


def read_split(task: Task, spec: LocalSpec, split: str, bad_rows: str = 'error'
               ) -> tuple[list[Example], list[str]]:
  """(examples, 'file:line: reason' of each skipped row) of one split's file."""
  if bad_rows not in BAD_ROWS:
    raise ValueError(f'config.data.bad_rows: {bad_rows!r} is not one of {BAD_ROWS}.')
  path = spec.paths[split]
  labelled = not split.startswith('test')
  examples, skipped = [], []
  for line_no, record in _records(path, spec):
    try:
      if isinstance(record, BadRow):
        raise record
      inputs = tuple(_text(record, f) for f in spec.text_fields)
      examples.append(Example(inputs, {task.name: _label(record, spec) if labelled else None}))
    except BadRow as e:
      where = f'{path}:{line_no}: {e}'
      if bad_rows == 'error':
        raise ValueError(f'{where} (config.data.bad_rows=\'skip\' skips and counts such '
                         f'rows).') from None
      skipped.append(where)
  return examples, skipped
