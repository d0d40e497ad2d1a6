"""One check for "this way of running the step trains exactly like the plain one", the runs
it compares, and the configs that need it most.

test_pmap and test_accumulation compare many candidates (pmap, micro-batches, both) against
the same plain one-device runs, so each plain run is computed once per test session and
kept in a file that every test process reads (conftest.py's MTL_JAX_TEST_RUNS folder)."""

import hashlib
import os
import pickle
from typing import Any, NamedTuple

import chex
import jax
import numpy as np

from conftest import build_step
from mtl_jax import weighting
from mtl_jax.data.pipeline import train_batches
from mtl_jax.parallel import pmap as pmap_lib

NUM_STEPS = 3
METRICS = ('loss', 'task_losses', 'task_counts', 'task_weights', 'adversary_loss',
           'adversary_accuracy', 'penalty')


class Run(NamedTuple):
  """A run of NUM_STEPS steps, as host arrays."""
  params: Any  # at the end
  weighting: Any  # the weighting method's state at the end
  terms: Any  # the objective terms' (the adversary's) parameters and optimizer states
  history: list[dict]  # each step's metrics
  initial: Any  # the parameters it started from


def run(config, method_name: str, mode: str = 'params', pmapped: bool = False) -> Run:
  """NUM_STEPS steps of `config`'s step (with its micro_batches) on the same global batches,
  jitted on one device or pmapped over all local devices."""
  _, data, state, _, step = build_step(config, weighting.get(method_name), mode,
                                       axis_name=pmap_lib.AXIS if pmapped else None)
  state = starting_state(config, state)
  initial = jax.device_get(state.params)
  n = jax.local_device_count()
  step, state = ((pmap_lib.pmap_step(step), pmap_lib.replicate(state)) if pmapped
                 else (jax.jit(step), state))
  history = []
  for batch in train_batches(data, config.sampling, 0, config.batch_size, 0, NUM_STEPS):
    state, metrics = step(state, pmap_lib.split_batch(batch, n) if pmapped else batch)
    history.append(jax.device_get(pmap_lib.unreplicate(metrics) if pmapped else metrics))
  state = jax.device_get(pmap_lib.unreplicate(state) if pmapped else state)
  return Run(state.params, state.weighting, state.terms, history, initial)


def plain_run(config, method_name: str, mode: str = 'params') -> Run:
  """`run` on one device without micro-batches: the truth, computed once per session."""
  config = config.copy_and_resolve_references()
  config.micro_batches = 1
  named = config.copy_and_resolve_references()
  named.data.data_dir = ''  # each test process has its own copy of the same data
  key = hashlib.sha256(f'{named.to_json()}|{method_name}|{mode}|{NUM_STEPS}'.encode())
  path = os.path.join(os.environ['MTL_JAX_TEST_RUNS'], key.hexdigest() + '.pkl')
  if os.path.exists(path):
    with open(path, 'rb') as f:
      return pickle.load(f)
  result = run(config, method_name, mode)
  with open(path + f'.{os.getpid()}', 'wb') as f:  # another process may write it too
    pickle.dump(result, f)
  os.replace(path + f'.{os.getpid()}', path)
  return result


def assert_same_training(reference: Run, candidate: Run):
  """The same start, the same metrics every step, and the same parameters, weighting state
  and objective terms at the end; the parameters moved (the comparison is of trained ones)."""
  for a, b in zip(reference.history, candidate.history, strict=True):
    for key in set(METRICS) & set(a):
      np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)
  moved = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), reference.params,
                                       reference.initial))
  assert max(moved) > 1e-3, 'the parameters did not move: the comparison is vacuous'
  chex.assert_trees_all_close(candidate.initial, reference.initial)  # the same start
  chex.assert_trees_all_close(candidate.params, reference.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(candidate.weighting, reference.weighting, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(candidate.terms, reference.terms, rtol=1e-4, atol=1e-5)


def use_shared_private(config, optimization='alternating'):
  """Shared-private with a strong orthogonality penalty and the adversary, on one encoder
  layer. The penalty Σ_k ‖Sᵀ P_k‖²_F / B² is not a sum over rows, so a slice of the batch
  has no share of it: a mean of the slices' penalties differs in value and gradient."""
  config.model.architecture = 'shared_private'
  config.model.num_layers = 1
  config.model.args = {'orthogonality': 1.0, 'private_hidden_size': 8, 'private_heads': 2}
  config.adversary.enabled = True
  config.adversary.optimization = optimization
  config.adversary.hidden = 8


def starting_state(config, state):
  """The state an equivalence run starts from: for shared-private, the encoders' kernels
  10x. At initialisation (std 0.02) attention adds about 1% to the [CLS] features, which
  then barely depend on the row: a slice's penalty equals the batch's to 1e-5, and the
  check could not tell a mean of the slices' penalties from the batch's."""
  if config.model.architecture != 'shared_private':
    return state
  return state.replace(params=jax.tree_util.tree_map_with_path(
      lambda path, x: x * 10 if path[0].key in ('encoder', 'private')
      and path[-1].key == 'kernel' else x, state.params))
