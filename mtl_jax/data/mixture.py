"""Mixture sampling over tasks, deterministic given (seed, step) so a run resumes exactly.

Each of the B rows of a step's batch picks a task i with probability p_i, then one example of
that task uniformly at random (with replacement). With n_i examples for task i:
  proportional:  p_i = n_i / sum_j n_j
  temperature:   p_i = n_i^(1/tau) / sum_j n_j^(1/tau)   (tau = 1 is proportional)
  uniform:       p_i = 1 / N                               (the limit tau -> inf)
"""

from collections.abc import Sequence

import numpy as np

STRATEGIES = ('proportional', 'temperature', 'uniform')


def mixture_probabilities(sizes: Sequence[int], strategy: str, temperature: float = 1.0
                          ) -> np.ndarray:
  sizes = np.asarray(sizes, np.float64)
  if sizes.ndim != 1 or not len(sizes) or (sizes <= 0).any():
    raise ValueError(f'Every task needs at least one training example; sizes={sizes.tolist()}.')
  if strategy == 'proportional':
    weights = sizes
  elif strategy == 'temperature':
    if temperature <= 0:
      raise ValueError(f'Sampling temperature must be > 0, got {temperature}.')
    weights = sizes ** (1.0 / temperature)
  elif strategy == 'uniform':
    weights = np.ones_like(sizes)
  else:
    raise ValueError(f'Unknown sampling strategy {strategy!r}; choose from {STRATEGIES}.')
  return weights / weights.sum()


def sample_rows(seed: int, step: int, batch_size: int, sizes: Sequence[int],
                probabilities: np.ndarray) -> np.ndarray:
  """Row indices into the concatenation of all tasks' tables for the batch of `step`."""
  rng = np.random.default_rng([seed, step])
  tasks = rng.choice(len(sizes), size=batch_size, p=probabilities)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  sizes = np.asarray(sizes)
  return offsets[tasks] + (rng.random(batch_size) * sizes[tasks]).astype(np.int64)
