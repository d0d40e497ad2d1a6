"""Mixture sampling over tasks, deterministic given (seed, step) so a run resumes exactly.

Each of the B rows of a step's batch picks a task i with probability p_i, then one example of
that task uniformly at random (with replacement). With n_i examples for task i:
  proportional:  p_i = n_i / sum_j n_j
  temperature:   p_i = n_i^(1/tau) / sum_j n_j^(1/tau)   (tau = 1 is proportional)
  uniform:       p_i = 1 / N                               (the limit tau -> inf)
  with a cap K:  n_i becomes min(n_i, K) first (seqio's mixing_rate_num_examples)

Rates may also follow a schedule (scheduled_rates). Weights that move online with each
task's excess loss over a reference model are a weighting method (mtl_jax.weighting.doremi).
  grouped:       exactly B/N rows of every task, in N consecutive groups in task order, each
                 row labelled for its group's task only; gradient methods then get every
                 task's gradient from one backward pass (mtl_jax.train.step).
"""

from collections.abc import Sequence

import numpy as np

STRATEGIES = ('proportional', 'temperature', 'uniform', 'grouped')


def mixture_probabilities(sizes: Sequence[int], strategy: str, temperature: float = 1.0,
                          cap: int = 0) -> np.ndarray:
  """Each task's probability (module docstring). With `cap` > 0 a task counts as at most
  `cap` examples first: seqio's mixing_rate_num_examples(maximum=cap, temperature=τ) is
  'temperature' with a cap, 'proportional' with one is its τ = 1."""
  sizes = np.asarray(sizes, np.float64)
  if sizes.ndim != 1 or not len(sizes) or (sizes <= 0).any():
    raise ValueError(f'Every task needs at least one training example; sizes={sizes.tolist()}.')
  if cap < 0:
    raise ValueError(f'The cap on a task\'s examples must be >= 0 (0: none), got {cap}.')
  if cap:
    sizes = np.minimum(sizes, cap)
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


def scheduled_rates(schedule: Sequence[tuple[int, Sequence[float]]], step: int) -> np.ndarray:
  """Mixture rates that change on a schedule: `schedule` lists (step, rates) waypoints in
  increasing step order; between two the rates move linearly, before the first and after the
  last they hold. Returned normalised to sum to 1."""
  steps = [s for s, _ in schedule]
  if not schedule or steps != sorted(set(steps)):
    raise ValueError(f'a rate schedule needs waypoints at increasing steps, got {steps}.')
  rates = np.asarray([r for _, r in schedule], np.float64)
  if rates.ndim != 2 or (rates < 0).any() or (rates.sum(axis=1) <= 0).any():
    raise ValueError('every waypoint needs one rate >= 0 per task, not all 0.')
  current = np.array([np.interp(step, steps, rates[:, i]) for i in range(rates.shape[1])])
  return current / current.sum()


def sample_rows(seed: int, step: int, batch_size: int, sizes: Sequence[int],
                probabilities: np.ndarray) -> np.ndarray:
  """Row indices into the concatenation of all tasks' tables for the batch of `step`."""
  rng = np.random.default_rng([seed, step])
  tasks = rng.choice(len(sizes), size=batch_size, p=probabilities)
  return _uniform_rows(rng, tasks, sizes)


def _uniform_rows(rng: np.random.Generator, components: np.ndarray, sizes: Sequence[int]
                  ) -> np.ndarray:
  """For each entry of `components`, one row of that component, uniformly (with replacement)."""
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  sizes = np.asarray(sizes)
  return offsets[components] + (rng.random(len(components)) * sizes[components]).astype(
      np.int64)


def sample_grouped_rows(seed: int, step: int, batch_size: int, sizes: Sequence[int],
                        components: Sequence[int]) -> np.ndarray:
  """Row indices for `grouped`: batch_size / len(components) rows of each listed component."""
  if batch_size % len(components):
    raise ValueError(f'Grouped batches need batch_size ({batch_size}) divisible by the number '
                     f'of tasks ({len(components)}).')
  rng = np.random.default_rng([seed, step])
  groups = np.repeat(np.asarray(components), batch_size // len(components))
  return _uniform_rows(rng, groups, sizes)
