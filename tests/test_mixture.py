"""Mixture sampling: the probability formulas, sampled frequencies, determinism."""

import numpy as np
import pytest
from scipy import stats

from mtl_jax.data.mixture import mixture_probabilities, sample_rows, scheduled_rates

SIZES = [1000, 200, 50, 10]


def test_probability_formulas():
  n = np.array(SIZES, float)
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'proportional'), n / n.sum())
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'uniform'), [0.25] * 4)
  tau = 3.0
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'temperature', tau),
                             n ** (1 / tau) / (n ** (1 / tau)).sum())
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'temperature', 1.0), n / n.sum())
  # Large tau approaches uniform.
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'temperature', 1e6), [0.25] * 4,
                             atol=1e-4)


def test_a_cap_is_seqio_s_mixing_rate_num_examples():
  """seqio.mixing_rate_num_examples(maximum=K, temperature=τ): min(n, K) ** (1 / τ), then
  normalised; the cap applies before the temperature."""
  capped = np.array([100, 100, 50, 10], float)
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'temperature', 2.0, cap=100),
                             capped ** 0.5 / (capped ** 0.5).sum())
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'proportional', cap=100),
                             capped / capped.sum())
  np.testing.assert_allclose(mixture_probabilities(SIZES, 'proportional', cap=5000),
                             mixture_probabilities(SIZES, 'proportional'))
  with pytest.raises(ValueError, match='must be >= 0'):
    mixture_probabilities(SIZES, 'proportional', cap=-1)


@pytest.mark.parametrize('strategy,tau', [('proportional', 1.0), ('temperature', 2.0),
                                          ('uniform', 1.0)])
def test_sampled_task_frequencies_match_formula(strategy, tau):
  p = mixture_probabilities(SIZES, strategy, tau)
  offsets = np.cumsum([0] + SIZES)
  rows = np.concatenate([sample_rows(7, step, 64, SIZES, p) for step in range(300)])
  counts = np.histogram(rows, bins=offsets)[0]
  assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-3
  # Within a task, examples are uniform.
  first = rows[rows < SIZES[0]]
  assert stats.chisquare(np.bincount(first // 100, minlength=10)).pvalue > 1e-3


def test_sampling_is_deterministic_in_seed_and_step():
  p = mixture_probabilities(SIZES, 'proportional')
  np.testing.assert_array_equal(sample_rows(3, 11, 32, SIZES, p), sample_rows(3, 11, 32, SIZES, p))
  assert not np.array_equal(sample_rows(3, 11, 32, SIZES, p), sample_rows(3, 12, 32, SIZES, p))
  assert not np.array_equal(sample_rows(3, 11, 32, SIZES, p), sample_rows(4, 11, 32, SIZES, p))


def test_bad_inputs():
  with pytest.raises(ValueError, match='strategy'):
    mixture_probabilities(SIZES, 'nope')
  with pytest.raises(ValueError, match='at least one'):
    mixture_probabilities([5, 0], 'proportional')
  with pytest.raises(ValueError, match='temperature'):
    mixture_probabilities(SIZES, 'temperature', 0.0)


def test_scheduled_rates_move_linearly_between_waypoints():
  schedule = [(0, [1.0, 0.0]), (100, [1.0, 1.0]), (200, [0.0, 3.0])]
  np.testing.assert_allclose(scheduled_rates(schedule, 0), [1.0, 0.0])
  np.testing.assert_allclose(scheduled_rates(schedule, 50), [1 / 1.5, 0.5 / 1.5])
  np.testing.assert_allclose(scheduled_rates(schedule, 150), [0.5 / 2.5, 2.0 / 2.5])
  np.testing.assert_allclose(scheduled_rates(schedule, 900), [0.0, 1.0])
  with pytest.raises(ValueError, match='increasing steps'):
    scheduled_rates([(10, [1, 1]), (5, [1, 1])], 0)
  with pytest.raises(ValueError, match='not all 0'):
    scheduled_rates([(0, [0, 0])], 0)
