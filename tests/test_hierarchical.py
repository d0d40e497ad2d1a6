"""Hierarchical sharing: tasks branch off the shared encoder at their depths, through layers of
their own. Checked against HardSharing, standalone Layers with a numpy head, and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.errors import ConfigError
from mtl_jax.data.pipeline import train_batches
from mtl_jax.models.encoder import Encoder, Layer
from mtl_jax.models.hierarchical import MASK, SEGMENTS, Hierarchical
from mtl_jax.models.multitask import HardSharing
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import TaskKind
from mtl_jax.train.forward import apply_model
from conftest import build_step
from test_model import CFG, TASKS, _inputs  # encoder config, tasks at depths 3, 2, 1


def _init(model, inputs):
  return nn.unbox(model.init(jax.random.key(0), *inputs))['params']


@pytest.mark.integration
def test_no_task_layers_is_hard_sharing():
  inputs = _inputs()
  model = Hierarchical(CFG, TASKS, shared_features=True, task_layers=0)
  params = _init(model, inputs)
  hard = HardSharing(CFG, TASKS, shared_features=True)
  assert jax.tree.structure(params) == jax.tree.structure(_init(hard, inputs))
  for rngs in (None, {'dropout': jax.random.key(1)}):
    kwargs = {'deterministic': rngs is None, 'rngs': rngs}
    ours = model.apply({'params': params}, *inputs, **kwargs)
    theirs = hard.apply({'params': params}, *inputs, **kwargs)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


@pytest.mark.integration
@pytest.mark.parametrize('task_layers', [1, 2])
def test_task_layers_are_standalone_layers_over_the_depth_d_states(task_layers):
  """Each task: Layer^k(hidden_states[d]) by standalone Layers, then the head in numpy."""
  inputs = _inputs()
  model = Hierarchical(CFG, TASKS, shared_features=True, task_layers=task_layers)
  params = _init(model, inputs)
  out = model.apply({'params': params}, *inputs)
  encoded = Encoder(CFG).apply({'params': params['encoder']}, *inputs)
  mask = np.asarray(inputs[2])
  bias = jnp.asarray(np.where(mask > 0, 0.0, -1e9)[:, None, None, :], jnp.float32)
  for task, depth in zip(TASKS, (3, 2, 1)):
    x = encoded.hidden_states[depth]
    for i in range(task_layers):
      x = Layer(CFG).apply({'params': params[f'layers_{task.name}'][f'layer_{i}']}, x, bias,
                           True)
    x = np.asarray(x if task.kind is TaskKind.TAGGING else x[:, 0])
    head = params[f'head_{task.name}']['classifier']
    expected = x @ np.asarray(head['kernel']) + np.asarray(head['bias'])
    if task.kind is TaskKind.REGRESSION:
      expected = expected[..., 0]
    np.testing.assert_allclose(out.tasks[task.name], expected, rtol=1e-5, atol=1e-5)
  # The adversary reads the shared encoder's last sentence feature, as under HardSharing.
  np.testing.assert_array_equal(out.shared, encoded.pooled)


def _grads(task_name, params, inputs, model):
  """Gradient of a task's summed outputs w.r.t. every parameter."""
  def total(p):
    return model.apply({'params': p}, *inputs).tasks[task_name].sum()
  return jax.grad(total)(params)


def _is_zero(tree):
  return all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(tree))


@pytest.mark.integration
def test_a_task_depends_on_the_encoder_only_up_to_its_depth():
  inputs = _inputs()
  model = Hierarchical(CFG, TASKS, task_layers=1)
  params = _init(model, inputs)
  for name, depth in (('tag', 1), ('reg', 2), ('cls', 3)):
    encoder = _grads(name, params, inputs, model)['encoder']
    for i in range(CFG.num_layers):  # layer_i computes hidden state i + 1
      assert _is_zero(encoder[f'layer_{i}']) == (i >= depth), (name, i)
    # Task layers read [CLS] of their own stack: the shared pooler is never used.
    assert _is_zero(encoder['pooler'])


@pytest.mark.integration
def test_a_task_layers_affect_only_that_task():
  inputs = _inputs()
  model = Hierarchical(CFG, TASKS, task_layers=1)
  params = _init(model, inputs)
  for task in TASKS:
    grads = _grads(task.name, params, inputs, model)
    for other in TASKS:
      own = other.name == task.name
      assert _is_zero(grads[f'layers_{other.name}']) != own, (task.name, other.name)
      assert _is_zero(grads[f'head_{other.name}']) != own, (task.name, other.name)


def test_padding_does_not_reach_the_task_layers():
  model = Hierarchical(CFG, TASKS, task_layers=1)
  ids, segments, mask = _inputs()
  params = _init(model, (ids, segments, mask))
  other_ids = ids.at[:, 12:].set(7)  # only padding positions change
  a = model.apply({'params': params}, ids, segments, mask).tasks
  b = model.apply({'params': params}, other_ids, segments, mask).tasks
  for name in ('cls', 'reg'):
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a['tag'][:, :10], b['tag'][:, :10], rtol=1e-5, atol=1e-6)


@pytest.fixture
def hier_config(smoke_config):
  """The smoke suite (pos, sentiment, entailment, similarity) at depths 1, 2, 2, last."""
  smoke_config.model.architecture = 'hierarchical'
  smoke_config.model.args.task_layers = 1
  smoke_config.task_depths = (1, 2, 2, -1)
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  return smoke_config


@pytest.mark.integration
def test_train_step_learns_a_fixed_batch(hier_config):
  hier_config.optimizer.learning_rate = 3e-3
  hier_config.optimizer.schedule = 'constant'
  tasks, data, state, model, step = build_step(hier_config)
  assert isinstance(model, Hierarchical)
  step = jax.jit(step, donate_argnums=0)
  batch = next(train_batches(data, hier_config.sampling, 0, 16, 0, 1))
  losses = []
  for _ in range(80):
    state, metrics = step(state, batch)
    losses.append(np.asarray(metrics['task_losses']))
  assert np.isfinite(losses).all()
  assert (losses[-1] < 0.5 * losses[0]).all(), (losses[0], losses[-1])


def _sgd_step(config, method, mode, diagnostics=False):
  tasks, data, state, model, step = build_step(config, method, mode, diagnostics,
                                               sgd_learning_rate=0.1)
  batch = next(train_batches(data, config.sampling, 0, 16, 0, 1))
  new_state, metrics = jax.jit(step)(state, batch)
  return state.params, new_state.params, metrics, (tasks, model, batch)


@pytest.mark.integration
def test_representation_mode_is_the_shared_features_the_tasks_branch_from(hier_config):
  """Representation mode: the same SGD step as params mode for 'equal', and per-task
  gradient norms over the branch features alone (the carried mask and segment ids add
  exactly 0)."""
  initial, reference, _, _ = _sgd_step(hier_config, weighting.get('equal'), 'params')
  _, params, metrics, (tasks, model, batch) = _sgd_step(
      hier_config, weighting.get('equal'), 'representation', diagnostics=True)
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(reference), jax.tree.leaves(initial)))
  assert moved > 1e-3
  jax.tree.map(lambda a, b, p: np.testing.assert_allclose(a - p, b - p, rtol=1e-3, atol=2e-6),
               params, reference, initial)

  features = apply_model(model, {'encoder': initial['encoder']}, batch, method='encode')
  assert sorted(features) == [MASK, SEGMENTS, 'sequence_1', 'sequence_2']
  carried = {MASK: features[MASK], SEGMENTS: features[SEGMENTS]}
  heads = {k: v for k, v in initial.items() if k != 'encoder'}

  def loss_i(branch, i):
    outputs = apply_model(model, heads, batch, method='decode',
                          inputs=({**branch, **carried},))
    return loss_vector(tasks, outputs.tasks, batch['labels'], batch['label_masks'])[0][i]

  branch = {k: v for k, v in features.items() if k not in carried}
  norms = [np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(
      jax.grad(loss_i)(branch, i)))) for i in range(len(tasks))]
  np.testing.assert_allclose(metrics['task_grad_norms'], norms, rtol=1e-4)


@pytest.mark.integration
def test_gradient_method_in_representation_mode_runs(hier_config):
  initial, params, metrics, _ = _sgd_step(hier_config, weighting.get('mgda'), 'representation')
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(metrics))
  assert not _is_zero(jax.tree.map(lambda a, b: a - b, params['encoder'], initial['encoder']))


@pytest.mark.parametrize('args,words', [({'task_layers': -1}, 'task_layers'),
                                        ({'task_layers': 1.5}, 'task_layers'),
                                        ({'layers': 1}, 'layers')])
def test_bad_fields_are_config_errors(hier_config, args, words):
  hier_config.model.args = args
  tasks = config_lib.validate(hier_config)
  with pytest.raises(ConfigError, match=rf'config\.model\.args.*{words}'):
    config_lib.build_model(hier_config, tasks, 100)
