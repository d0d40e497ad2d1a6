"""The train step's gradient routes (mtl_jax.train.step with mtl_jax.weighting methods).

The truths: one backward of Σ λ_i L_i, and per-task gradients taken one task at a time with
separate jax.grad calls (the LibMTL way), both independent of the vmapped per-task VJP.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import build_step
from mtl_jax import weighting
from mtl_jax.data.pipeline import train_batches
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.train.forward import apply_model
from mtl_jax.weighting import EmptyState, Method, Needs


LEARNING_RATE = 1.0  # SGD: the parameter change is minus the gradient itself


@pytest.fixture
def config(exact_config):
  # [CLS] through the pooler, the features these tolerances were set on: under mean pooling
  # the data-sharded pcgrad-grouped step matched one device only to 1e-5 absolute.
  exact_config.model.pooling, exact_config.model.pooler = 'cls', True
  exact_config.model.pair_features = False
  return exact_config


def _first_batch(config, data):
  return next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))


def _one_step(config, method, mode='params', diagnostics=False, edit_batch=None):
  """(params after one SGD step, metrics, (tasks, model, initial params, batch))."""
  tasks, data, state, model, step = build_step(config, method, mode, diagnostics,
                                               sgd_learning_rate=LEARNING_RATE)
  batch = _first_batch(config, data)
  if edit_batch:
    batch = edit_batch(batch)
  new_state, metrics = jax.jit(step)(state, batch)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state.weighting, state.weighting)
  return new_state.params, metrics, (tasks, model, state.params, batch)


def _ones_from_gram():
  return Method(lambda n: EmptyState(),
                lambda info, s: (jnp.where(info.present, 1.0, 0.0), s), Needs.GRAM)


def _sum_of_grads():
  """A GRADS method whose state holds the last per-task gradients (gradient-shaped state)."""
  def init(num_tasks, grads_like):
    return jax.tree.map(lambda x: jnp.zeros((num_tasks,) + x.shape, x.dtype), grads_like)

  return Method(init, lambda info, s: (jax.tree.map(lambda g: g.sum(0), info.grads),
                                       info.grads), Needs.GRADS)


def _assert_same_params(a, b, initial):
  """Same SGD step: the parameter changes (minus the gradients) agree, and are not zero."""
  moved = [float(np.abs(np.asarray(x) - np.asarray(p)).max())
           for x, p in zip(jax.tree.leaves(a), jax.tree.leaves(initial))]
  assert max(moved) > 1e-3, 'the step did not move the parameters: the comparison is vacuous'
  jax.tree.map(lambda x, y, p: np.testing.assert_allclose(x - p, y - p, rtol=1e-3, atol=2e-6),
               a, b, initial)


@pytest.mark.integration
@pytest.mark.parametrize('mode', ['params', 'representation'])
def test_per_task_routes_equal_one_backward_for_linear_methods(config, mode):
  """Σ_i g_i formed from per-task gradients == the gradient of Σ_i L_i (one backward)."""
  reference, ref_metrics, (*_, initial, _) = _one_step(config, weighting.get('equal'))
  for method in (weighting.get('equal'), _ones_from_gram(), _sum_of_grads()):
    params, metrics, _ = _one_step(config, method, mode, diagnostics=True)
    _assert_same_params(params, reference, initial)
    np.testing.assert_allclose(metrics['task_losses'], ref_metrics['task_losses'], rtol=1e-6)


def _separate_task_gradients(tasks, model, params, batch, mode):
  """Each task's gradient from its own jax.grad call, flattened, in float64."""
  def features_of(p):
    return apply_model(model, {'encoder': p['encoder']}, batch, method='encode')

  def loss_i(x, i):
    if mode == 'params':
      outputs = apply_model(model, {**params, 'encoder': x}, batch)
    else:
      heads = {k: v for k, v in params.items() if k != 'encoder'}
      outputs = apply_model(model, heads, batch, method='decode', inputs=(x,))
    return loss_vector(tasks, outputs.tasks, batch['labels'], batch['label_masks'])[0][i]

  x = params['encoder'] if mode == 'params' else features_of(params)
  return np.stack([
      np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.grad(loss_i)(x, i))]
                     ).astype(np.float64) for i in range(len(tasks))])


@pytest.mark.integration
@pytest.mark.parametrize('mode,strategy', [('params', 'proportional'),
                                           ('representation', 'proportional'),
                                           ('params', 'grouped')])
def test_diagnostics_match_separately_computed_gradients(config, mode, strategy):
  config.sampling.strategy = strategy
  _, metrics, (tasks, model, params, batch) = _one_step(config, weighting.get('equal'), mode,
                                                        diagnostics=True)
  g = _separate_task_gradients(tasks, model, params, batch, mode)
  norms = np.linalg.norm(g, axis=1)
  np.testing.assert_allclose(metrics['task_grad_norms'], norms, rtol=1e-4)
  np.testing.assert_allclose(metrics['task_grad_cosine'], (g @ g.T) / np.outer(norms, norms),
                             atol=1e-4)
  assert np.allclose(np.diag(metrics['task_grad_cosine']), 1.0, atol=1e-5)


@pytest.mark.integration
def test_grouped_route_equals_one_backward(config):
  """On grouped batches the one-backward per-task route gives the same step as Σ_i L_i."""
  config.sampling.strategy = 'grouped'
  reference, ref_metrics, (*_, initial, _) = _one_step(config, weighting.get('equal'))
  for method in (_ones_from_gram(), _sum_of_grads()):
    params, metrics, _ = _one_step(config, method)
    _assert_same_params(params, reference, initial)
    np.testing.assert_allclose(metrics['task_losses'], ref_metrics['task_losses'], rtol=1e-5)


@pytest.mark.integration
def test_absent_task_gets_weight_zero_and_no_nan(config):
  def drop_sentiment(batch):
    masks = dict(batch['label_masks'])
    masks['sentiment'] = np.zeros_like(masks['sentiment'])
    return {**batch, 'label_masks': masks}

  for method in (weighting.get('equal'), _ones_from_gram()):
    params, metrics, (tasks, *_) = _one_step(config, method, diagnostics=True,
                                             edit_batch=drop_sentiment)
    i = [t.name for t in tasks].index('sentiment')
    assert metrics['task_counts'][i] == 0 and metrics['task_weights'][i] == 0
    assert metrics['task_grad_norms'][i] == 0
    assert np.isfinite(metrics['task_grad_cosine']).all()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.integration
def test_chain_scales_tasks_before_the_aggregator(config):
  """chain(static λ, sum of gradients) == static λ alone: Σ λ_i g_i either way."""
  lam = (2.0, 0.5, 1.0, 0.0)
  reference, _, (*_, initial, _) = _one_step(config, weighting.get('static', weights=lam))
  for method in (_sum_of_grads(), _ones_from_gram()):
    chained = weighting.chain(weighting.get('static', weights=lam), method)
    params, metrics, _ = _one_step(config, chained)
    _assert_same_params(params, reference, initial)
  np.testing.assert_allclose(metrics['task_weights'], lam)


def test_unknown_method_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown weighting method 'nope'.*equal"):
    weighting.get('nope')


@pytest.mark.integration
@pytest.mark.parametrize('name,strategy', [('mgda', 'proportional'), ('pcgrad', 'grouped')])
def test_methods_see_global_gradients_in_the_data_sharded_step(config, name, strategy):
  """The batch split over 4 devices (jit + NamedSharding): the same step as on one device,
  because the per-task losses, gradients and Gram are global before the method sees them."""
  config.sampling.strategy = strategy
  _, data, state, _, step = build_step(config, weighting.get(name), diagnostics=True,
                                       sgd_learning_rate=LEARNING_RATE)
  batch = _first_batch(config, data)
  single, single_metrics = jax.jit(step)(state, batch)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ('data',))
  sharded_batch = jax.device_put(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data')))
  replicated = jax.device_put(state, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  sharded, metrics = jax.jit(step)(replicated, sharded_batch)
  _assert_same_params(sharded.params, single.params, state.params)
  np.testing.assert_allclose(metrics['task_grad_cosine'], single_metrics['task_grad_cosine'],
                             atol=1e-5)
  np.testing.assert_allclose(metrics['task_weights'], single_metrics['task_weights'],
                             rtol=1e-4)
