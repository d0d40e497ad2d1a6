"""The shared representation of a fixed sample of validation rows, at the start and the end
of training: what the projection plot draws to show whether MTL learned general features.

The feature is the encoder's last sentence feature (pooled or [CLS]) where the
architecture's `encode` returns it, otherwise its first float array ([CLS] of a sequence).
Architectures whose `encode` carries no features (soft sharing) have none to save.
"""

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.models.base import sentence_key
from mtl_jax.parallel.distributed import is_writer
from mtl_jax.tasks import Task
from mtl_jax.train.forward import apply_model

FILENAME = 'representations.npz'


def sample_rows(tasks: Sequence[Task], tables: dict[str, dict[str, dict]], per_task: int
                ) -> tuple[dict, np.ndarray]:
  """(inputs of the first `per_task` labelled rows of each task's primary validation split,
  the task index of each row). A fixed sample, so start and end are the same rows. A
  multiple-choice example is represented by its first candidate input."""
  inputs, owner = {k: [] for k in INPUT_KEYS}, []
  for index, task in enumerate(tasks):
    table = next(iter(tables[task.name].values()))
    labelled = table['label_masks'][task.name] > 0
    rows = np.flatnonzero(labelled.reshape(len(labelled), -1).any(axis=1))[:per_task]
    for k in INPUT_KEYS:
      x = table[k][rows]
      inputs[k].append(x[:, 0] if x.ndim == 3 else x)
    owner.append(np.full(len(rows), index))
  return {k: np.concatenate(v) for k, v in inputs.items()}, np.concatenate(owner)


def _sentence_feature(representation, key: str) -> jax.Array | None:
  """(B, D): the float leaf named `key`, else the first float leaf; None without one."""
  leaves = jax.tree_util.tree_flatten_with_path(representation)[0]
  floats = [(jax.tree_util.keystr(path), x) for path, x in leaves
            if jnp.issubdtype(x.dtype, jnp.floating)]
  if not floats:
    return None
  named = [x for path, x in floats if path.endswith(f"['{key}']")]
  x = named[0] if named else floats[0][1]
  return x if x.ndim == 2 else x[:, 0]


class Probe:
  """params -> (rows, D) features of the sample (None when the model has none), and the
  file that keeps them."""

  def __init__(self, model, tasks: Sequence[Task], tables: dict, per_task: int):
    self.inputs, self.owner = sample_rows(tasks, tables, per_task)
    self.names = [t.name for t in tasks]
    key = sentence_key(model.encoder_config)
    self._encode = jax.jit(lambda params: _sentence_feature(
        apply_model(model, params, self.inputs, method='encode'), key))

  def __call__(self, params) -> np.ndarray | None:
    features = self._encode(params)
    return None if features is None else np.asarray(features, np.float32)

  def save(self, workdir: str, start: np.ndarray | None, end: np.ndarray | None):
    """workdir/representations.npz: start, end (rows, D), task (rows,), task_names."""
    if start is None or end is None or not is_writer():
      return
    np.savez(os.path.join(workdir, FILENAME), start=start, end=end, task=self.owner,
             task_names=np.array(self.names))


def probe(model, tasks: Sequence[Task], tables: dict, per_task: int) -> Probe | None:
  """A Probe of a multi-task run; None for one task (nothing to colour apart) or
  per_task=0 (switched off)."""
  return Probe(model, tasks, tables, per_task) if per_task and len(tasks) > 1 else None
