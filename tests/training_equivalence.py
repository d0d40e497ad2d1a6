"""One check for "this way of running the step trains exactly like the plain one", and the
configs that need it most."""

import chex
import jax
import numpy as np

METRICS = ('loss', 'task_losses', 'task_counts', 'task_weights', 'adversary_loss',
           'adversary_accuracy', 'penalty')


def assert_same_training(reference, candidate, initial_params):
  """`reference` and `candidate` are (final state, per-step metrics): the same metrics every
  step, and the same parameters and weighting state at the end, which moved from
  `initial_params` (so that the comparison is of trained parameters)."""
  (state, history), (other, other_history) = reference, candidate
  for a, b in zip(history, other_history, strict=True):
    for key in set(METRICS) & set(a):
      np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)
  moved = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), state.params,
                                       initial_params))
  assert max(moved) > 1e-3, 'the parameters did not move: the comparison is vacuous'
  chex.assert_trees_all_close(other.params, state.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(other.weighting, state.weighting, rtol=1e-4, atol=1e-5)


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
