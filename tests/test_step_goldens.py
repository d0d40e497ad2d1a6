"""Each route through the train step still makes the stored one-step result
(tests/step_goldens.py): every leaf of the new state and every metric within
5e-7 · max(1, |x|)."""

import jax
import numpy as np
import pytest

import step_goldens

# Goldens written before the objective terms had their own state (state format 1) hold the
# discriminator in the model's params and its optimizer state in adversary_opt_state.
# Today's path prefix -> the format-1 one.
FORMAT_1_PATHS = (("terms['adversary'].params", "params['discriminator']"),
                  ("terms['adversary'].opt_state", 'adversary_opt_state'))


def stored_path(path: str, stored: dict) -> str:
  """Where the golden `stored` keeps today's leaf `path`."""
  for now, then in FORMAT_1_PATHS:
    if path not in stored and path.startswith('.' + now):
      return '.' + then + path[len(now) + 1:]
  return path


def as_stored(leaves: dict, stored: dict) -> dict:
  return {stored_path(k, stored): v for k, v in leaves.items()}


def from_stored(stored: dict, like: dict) -> dict:
  """Today's {path: array} for the leaves of `like`, read from the golden."""
  return {k: stored[stored_path(k, stored)] for k in like}


def assert_close(actual: dict, expected: dict, what: str):
  assert actual.keys() == expected.keys(), (
      f'{what}: leaves differ: only now {sorted(actual.keys() - expected.keys())}, '
      f'only stored {sorted(expected.keys() - actual.keys())}')
  for key, want in expected.items():
    got = actual[key]
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f'{what}{key}: {got.dtype}{got.shape}, stored {want.dtype}{want.shape}')
    if np.issubdtype(want.dtype, np.inexact):
      bound = 5e-7 * np.maximum(1.0, np.abs(want))
      bad = ~(np.abs(got - want) <= bound) & ~(np.isnan(got) & np.isnan(want))
      assert not bad.any(), (f'{what}{key}: {bad.sum()} of {bad.size} entries differ, '
                             f'most by {np.nanmax(np.abs(got - want)):.3g}')
    else:
      np.testing.assert_array_equal(got, want, err_msg=f'{what}{key}')


@pytest.mark.integration
@pytest.mark.parametrize('route', step_goldens.ROUTES)
def test_one_step_equals_the_golden(route, data_dir):
  stored = np.load(f'{step_goldens.DIRECTORY}/{route}.npz')
  backend, batches = step_goldens.build(route, data_dir)
  before = step_goldens.part(stored, 'state')
  # The state's tree from its abstract shapes: creating a state would compile a program
  # whose values the golden's replace anyway.
  abstract = backend.abstract
  state = step_goldens.unflat(abstract, from_stored(before, step_goldens.paths(abstract)))
  batch = step_goldens.unflat(next(batches()), step_goldens.part(stored, 'batch'))
  new_state, metrics = backend.step(step_goldens.to_step(backend, state), batch)
  after = step_goldens.part(stored, 'new_state')
  assert_close(as_stored(step_goldens.flat(step_goldens.to_host(backend, new_state)), after),
               after, f'{route}: new state')
  assert_close(step_goldens.flat(jax.device_get(metrics)), step_goldens.part(stored, 'metrics'),
               f'{route}: metrics')
