"""Synthetic batches for benchmarks and memory figures: random tokens and labels of the
batch layout the pipeline makes (data/pipeline.py)."""

import numpy as np

from mtl_jax.tasks import TaskKind


def synthetic_batch(tasks, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                    grouped: bool = False):
  """Random tokens, every example labelled for every task (as the PyTorch peer does), or
  `grouped`: N equal groups of rows, group i labelled for task i only."""
  rng = np.random.default_rng(seed)
  ones = np.ones((batch_size, seq_len), np.int32)
  labels, masks = {}, {}
  for t in tasks:
    if t.kind is TaskKind.TAGGING:
      labels[t.name] = rng.integers(0, t.num_labels, (batch_size, seq_len)).astype(np.int32)
    elif t.kind is TaskKind.REGRESSION:
      labels[t.name] = rng.normal(size=batch_size).astype(np.float32)
    else:
      labels[t.name] = rng.integers(0, t.num_labels, batch_size).astype(np.int32)
    masks[t.name] = np.ones(labels[t.name].shape, np.float32)
  if grouped:
    group = np.repeat(np.arange(len(tasks)), batch_size // len(tasks))
    for i, t in enumerate(tasks):
      masks[t.name] *= (group == i).reshape((-1,) + (1,) * (masks[t.name].ndim - 1))
  return {'input_ids': rng.integers(0, vocab_size, (batch_size, seq_len)).astype(np.int32),
          'segment_ids': 0 * ones, 'attention_mask': ones, 'labels': labels,
          'label_masks': masks}
