"""GLUE, SuperGLUE and MultiNLI examples from TFDS, read without TensorFlow.

A dataset prepared under data_dir (array_record files and dataset_info.json) is opened with
`tfds.builder_from_directory`, which needs no builder code: SuperGLUE's builder names
TensorFlow dtypes in its features, so constructing it fails where TensorFlow is absent.
Anything else goes through `tfds.data_source`, which finds the GLUE builders only after
`import tensorflow_datasets.text`, prepares with download=True, and is what
`tfds.testing.mock_data` replaces in tests.
"""

import os

import grain
import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data.features import Example, as_text
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.tasks.glue import TFDS, TfdsData


def tfds_data(task: Task) -> TfdsData:
  try:
    return TFDS[task.name]
  except KeyError:
    raise ValueError(f'Task {task.name!r} is not a TFDS task; TFDS tasks: '
                     f'{", ".join(sorted(TFDS))}.') from None


def prepared_dir(name: str, data_dir: str) -> str | None:
  """data_dir/<name>/<newest version> when a prepared dataset is there, else None."""
  root = os.path.join(data_dir, name)
  if not os.path.isdir(root):
    return None
  versions = [v for v in os.listdir(root)
              if tfds.core.Version.is_valid(v)
              and os.path.isfile(os.path.join(root, v, 'dataset_info.json'))]
  return os.path.join(root, max(versions, key=tfds.core.Version)) if versions else None


def data_source(name: str, split: str, data_dir: str, download: bool = False):
  """A random-access source of one split's records."""
  prepared = prepared_dir(name, data_dir)
  if prepared is not None:
    return tfds.builder_from_directory(prepared).as_data_source(split)
  import tensorflow_datasets.text  # noqa: F401  (registers the glue, super_glue, multi_nli builders)
  tfds.disable_progress_bar()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # tfds raises a different type for each way of not finding data
    raise FileNotFoundError(
        f'TFDS dataset {name!r} (split {split!r}) is not prepared in {data_dir}. Prepare it '
        f'once where TensorFlow and the internet are available: `tfds build {name} '
        f'--data_dir={data_dir} --file_format=array_record`; or set config.data.download=True '
        f'(GLUE only: SuperGLUE\'s builder needs TensorFlow); or point config.data.data_dir at '
        f'a folder that holds it; or read GLUE\'s TSV files with config.data.local '
        f'(docs/datasets.md). TFDS said: {type(e).__name__}: {e}') from e


def _plain_idx(idx):
  """A record's idx as Python ints: an int, a dict of them (MultiRC), or None (MultiNLI's
  records have no idx)."""
  if idx is None:
    return None
  if isinstance(idx, dict):
    return {k: int(np.asarray(v).item()) for k, v in idx.items()}
  return int(np.asarray(idx).item())


def to_example(task: Task, data: TfdsData, record: dict) -> Example:
  """A record -> Example; the label -1 of a test split becomes a missing label."""
  fields = {k: as_text(v) for k, v in record.items() if isinstance(v, (str, bytes))}
  templates = data.templates or tuple(f'{{{f}}}' for f in task.input_fields)
  label = np.asarray(record['label']).item()
  if label == -1:
    label = None
  elif task.kind is TaskKind.REGRESSION:
    label = float(label)
  fill = lambda templates: tuple(t.format(**fields) for t in templates)
  idx = _plain_idx(record.get('idx'))
  if data.choices:
    return Example((), {task.name: label}, tuple(fill(c) for c in data.choices), idx)
  return Example(fill(templates), {task.name: label}, idx=idx)


def group_ids(task: Task, examples: list[Example]) -> np.ndarray | None:
  """(n,) int32: the group each example is scored in (TfdsData.group_by over its idx), as
  ids numbered in order of first appearance; None when the task scores no groups or an
  example has no idx (one not read from TFDS)."""
  fields = TFDS[task.name].group_by if task.name in TFDS else ()
  if not fields or any(ex.idx is None for ex in examples):
    return None
  ids = {}
  return np.asarray([ids.setdefault(tuple(ex.idx[f] for f in fields), len(ids))
                     for ex in examples], np.int32)


def split_examples(task: Task, split: str, data_dir: str, download: bool = False
                   ) -> grain.MapDataset:
  """One split of a TFDS task as random-access Examples: a record is read when indexed."""
  data = tfds_data(task)
  source = data_source(task.source, split, data_dir, download)
  return grain.MapDataset.source(source).map(lambda r: to_example(task, data, r))
