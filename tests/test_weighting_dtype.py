"""Every registered method works in the dtype it is given.

With 64-bit types enabled (only inside these tests), float64 gradients, Gram and losses give
float64 outputs equal to the float32 run's, and float32 inputs still give float32 outputs;
a method's state keeps its dtypes from step to step (a jitted loop carries it).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weighting_harness import run
from mtl_jax import weighting

N, P = 3, 5


def _steps():
  """Three steps of (G, losses, present); task 1 is absent at the last one."""
  rng = np.random.default_rng(0)
  steps = []
  for t in range(3):
    g = rng.normal(size=(N, P)) * np.array([[1.0], [0.3], [2.0]])
    g[2] -= 0.8 * g[0]  # tasks 0 and 2 conflict
    losses = np.array([0.9, 1.7, 0.4]) * (1.0 - np.array([0.1, 0.3, 0.2]) * t)
    present = np.array([True, t < 2, True])
    g[~present], losses[~present] = 0.0, 0.0
    steps.append((g.astype(np.float32), losses.astype(np.float32), present))
  return steps


def _trajectory(name, dtype):
  """[[direction, *leaves of the output]] over the steps, and the states' dtypes."""
  method = weighting.get(name)
  state, results, dtypes = None, [], []
  for t, (g, losses, present) in enumerate(_steps()):
    direction, out, state = run(method, g, losses, state, present=present, key=t, step=t,
                                dtype=dtype)
    results.append([direction, *jax.tree.leaves(out)])
    dtypes.append([x.dtype for x in jax.tree.leaves(state)])
  return results, dtypes


@functools.cache
def _float32_reference(name):
  results, _ = _trajectory(name, jnp.float32)
  return [[np.asarray(x, np.float64) for x in r] for r in results]


@pytest.mark.integration
@pytest.mark.parametrize('name', weighting.names())
def test_float64_inputs_give_float64_outputs_equal_to_float32(name):
  reference = _float32_reference(name)
  with jax.enable_x64(True):
    results, dtypes = _trajectory(name, jnp.float64)
  assert not jax.config.jax_enable_x64  # restored for the other tests
  for t, (result, ref) in enumerate(zip(results, reference)):
    for x in result:
      assert x.dtype == jnp.float64, f'{name} step {t}: {x.dtype}'
    for x, r in zip(result, ref):
      err = np.abs(np.asarray(x) - r).max()
      assert err <= 1e-5 * max(np.abs(r).max(), 1.0), f'{name} step {t}: {x} vs {r}'
  assert all(d == dtypes[0] for d in dtypes), f'{name}: the state changes dtype: {dtypes}'


@pytest.mark.integration
@pytest.mark.parametrize('name', weighting.names())
def test_float32_inputs_stay_float32_with_x64_enabled(name):
  reference = _float32_reference(name)
  with jax.enable_x64(True):
    results, dtypes = _trajectory(name, jnp.float32)
  for t, (result, ref) in enumerate(zip(results, reference)):
    for x, r in zip(result, ref):
      assert x.dtype == jnp.float32, f'{name} step {t}: {x.dtype}'
      np.testing.assert_allclose(np.asarray(x), r, rtol=1e-5, atol=1e-6 * np.abs(r).max(),
                                 err_msg=f'{name} step {t}')
  assert all(d == dtypes[0] for d in dtypes), f'{name}: the state changes dtype: {dtypes}'
