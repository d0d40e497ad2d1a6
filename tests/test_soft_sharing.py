"""Soft sharing: the stacked encoders against standalone ones, the coupling penalties against
numpy and their analytic gradients, the train step, and config errors."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import sharing
from mtl_jax import config as config_lib
from mtl_jax.data.pipeline import train_batches
from mtl_jax.errors import ConfigError
from mtl_jax.models.encoder import Encoder, EncoderConfig
from mtl_jax.models.multitask import HardSharing
from mtl_jax.models.soft import TRACE_EPSILON, SoftSharing, trace_penalty
from mtl_jax.tasks import Task, TaskKind
from conftest import build_step

CFG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                    intermediate_size=32, max_len=16)
TASKS = (
    Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test'),
    Task('reg', TaskKind.REGRESSION, 1, ('a', 'b'), 'reg', ('pearson',), 'test', depth=1),
    Task('tag', TaskKind.TAGGING, 5, ('a',), 'tag', ('token_accuracy',), 'test', depth=1),
)


def _inputs(batch=2, length=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(rng.integers(5, CFG.vocab_size, (batch, length)), jnp.int32)
  mask = jnp.asarray(np.arange(length) < 9, jnp.int32)[None].repeat(batch, 0)
  return ids, jnp.zeros_like(ids), mask


def _init(model):
  return nn.unbox(model.init(jax.random.key(0), *_inputs()))['params']


def _copy(stacked, g):
  return jax.tree.map(lambda x: x[g], stacked)


def _run_encoders(model, params, deterministic=True, rngs=None):
  return model.apply({'params': params}, *_inputs(), deterministic,
                     method=lambda m, *a: m.encoders(*a), rngs=rngs)


def _squared_norm(tree):
  return sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree.leaves(tree))


@pytest.mark.integration
def test_copy_g_is_a_standalone_encoder_with_params_g():
  model = SoftSharing(CFG, TASKS)
  params = _init(model)
  stacked = params['encoders']
  assert jax.tree.leaves(stacked)[0].shape[0] == 3
  outputs = _run_encoders(model, params)
  for g in range(3):
    alone = Encoder(CFG).apply({'params': _copy(stacked, g)}, *_inputs())
    for mine, theirs in zip(_copy(outputs, g).hidden_states, alone.hidden_states):
      np.testing.assert_allclose(mine, theirs, atol=1e-5)
    np.testing.assert_allclose(outputs.pooled[g], alone.pooled, atol=1e-5)
  # Independent initialisation: randomly initialised weights differ between copies.
  kernel = stacked['layer_0']['attention']['query']['kernel']
  assert all(not np.allclose(kernel[g], kernel[h]) for g, h in itertools.combinations(range(3), 2))


@pytest.mark.integration
def test_copies_get_independent_dropout():
  model = SoftSharing(CFG, TASKS)
  params = _init(model)
  same = {**params, 'encoders': jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape),
                                               params['encoders'])}
  quiet = _run_encoders(model, same).pooled
  np.testing.assert_allclose(quiet[0], quiet[1], atol=1e-6)
  noisy = _run_encoders(model, same, False, {'dropout': jax.random.key(1)}).pooled
  assert not np.allclose(noisy[0], noisy[1])


@pytest.mark.integration
def test_each_task_reads_its_groups_encoder():
  """Task i's output equals the reference (HardSharing) with encoder = copy groups[i]."""
  model = SoftSharing(CFG, TASKS, groups=(1, 0, 1))
  params = _init(model)
  out = model.apply({'params': params}, *_inputs()).tasks
  heads = {k: v for k, v in params.items() if k != 'encoders'}
  for name, group in zip(('cls', 'reg', 'tag'), (1, 0, 1)):
    hard_params = {'encoder': _copy(params['encoders'], group), **heads}
    reference = HardSharing(CFG, TASKS).apply({'params': hard_params}, *_inputs()).tasks
    np.testing.assert_allclose(out[name], reference[name], atol=1e-5)


def test_tasks_in_one_group_share_features():
  tasks = tuple(Task(n, TaskKind.CLASSIFICATION, 2, ('a',), n, ('accuracy',), 'test')
                for n in 'abc')
  model = SoftSharing(CFG, tasks, groups=(0, 1, 0))
  params = _init(model)
  params = {**params, 'head_b': params['head_a'], 'head_c': params['head_a']}
  out = model.apply({'params': params}, *_inputs()).tasks
  np.testing.assert_allclose(out['a'], out['c'], atol=1e-6)
  assert not np.allclose(out['a'], out['b'], atol=1e-3)


@pytest.mark.integration
def test_l2_penalty_is_the_pairwise_form():
  strength = 0.3
  model = SoftSharing(CFG, TASKS, strength=strength)
  params = _init(model)
  penalty = model.apply({'params': params}, *_inputs()).penalty
  stacked = params['encoders']
  pairwise = sum(_squared_norm(jax.tree.map(lambda x, g=g, h=h: x[g] - x[h], stacked))
                 for g, h in itertools.combinations(range(3), 2))
  np.testing.assert_allclose(penalty, strength * pairwise / 3, rtol=1e-5)


@pytest.mark.integration
def test_l2_penalty_gradient_is_analytic():
  strength = 0.3
  model = SoftSharing(CFG, TASKS, strength=strength)
  params = _init(model)
  grads = jax.grad(lambda p: model.apply({'params': p}, *_inputs()).penalty)(params)
  expected = jax.tree.map(lambda x: 2 * strength * (x - x.mean(0)), params['encoders'])
  for mine, theirs in zip(jax.tree.leaves(grads['encoders']), jax.tree.leaves(expected)):
    np.testing.assert_allclose(mine, theirs, atol=1e-6)
  assert all(not np.any(g) for k, v in grads.items() if k != 'encoders'
             for g in jax.tree.leaves(v))


def test_trace_penalty_is_the_nuclear_norm():
  strength = 0.3
  model = SoftSharing(CFG, TASKS, penalty='trace', strength=strength)
  params = _init(model)
  penalty = model.apply({'params': params}, *_inputs()).penalty
  sigmas = [np.linalg.svd(np.asarray(x, np.float64).reshape(3, -1), compute_uv=False)
            for x in jax.tree.leaves(params['encoders'])]
  nuclear = sum(s.sum() for s in sigmas)
  # Each smoothed singular value lies within √ε of the exact one.
  bound = sum(s.size for s in sigmas) * TRACE_EPSILON ** 0.5
  assert abs(float(penalty) / strength - nuclear) <= bound + 1e-5 * nuclear


def test_trace_penalty_gradient_is_u_v_transpose():
  """∇||W||_* = U Vᵀ (thin SVD) for full rank W; for identical rows only the nonzero
  singular value contributes; for W = 0 the smoothed gradient is 0."""
  grad = lambda w: jax.grad(lambda p: trace_penalty({'w': p}))(jnp.asarray(w, jnp.float32))
  full = np.random.default_rng(0).normal(size=(3, 7))
  u, _, vt = np.linalg.svd(full, full_matrices=False)
  np.testing.assert_allclose(grad(full), u @ vt, atol=1e-4)
  row = np.random.default_rng(1).normal(size=(1, 50))
  identical = np.repeat(row, 3, axis=0)
  expected = identical / (np.sqrt(3) * np.linalg.norm(row))  # u_1 v_1ᵀ
  np.testing.assert_allclose(grad(identical), expected, atol=2e-3)
  np.testing.assert_array_equal(grad(np.zeros((3, 5))), 0.0)


@pytest.mark.integration
def test_without_coupling_a_tasks_gradient_touches_only_its_encoder():
  model = SoftSharing(CFG, TASKS, strength=0.0)
  assert not model.regularized
  params = _init(model)
  for i, name in enumerate(('cls', 'reg', 'tag')):
    grads = jax.grad(lambda p: jnp.sum(model.apply({'params': p}, *_inputs()).tasks[name]))(
        params)['encoders']
    for g in range(3):
      touched = any(np.any(x[g]) for x in jax.tree.leaves(grads))
      assert touched == (g == i), (name, g)


@pytest.mark.integration
def test_regularized_needs_strength_and_two_copies():
  assert SoftSharing(CFG, TASKS).regularized
  assert not SoftSharing(CFG, TASKS, groups=(0, 0, 0)).regularized
  model = SoftSharing(CFG, TASKS, groups=(0, 0, 0))
  assert float(model.apply({'params': _init(model)}, *_inputs()).penalty) == 0.0


def _soft_config(config, **args):
  config.mode = 'multi'
  config.model.architecture = 'soft'
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
  config.model.head_dropout_rate = 0.0
  config.model.args.update(args)
  return config


def _distance(params):
  """Σ_g ||θ_g − θ̄||² over the stacked encoders."""
  return _squared_norm(jax.tree.map(lambda x: x - x.mean(0), params['encoders']))


@pytest.mark.integration
@pytest.mark.parametrize('penalty', ['l2', 'trace'])
def test_train_step_reports_the_models_penalty(smoke_config, penalty):
  config = _soft_config(smoke_config, penalty=penalty, strength=0.01)
  _, data, state, model, step = build_step(config)
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  inputs = [batch[k] for k in ('input_ids', 'segment_ids', 'attention_mask')]
  expected = model.apply({'params': state.params}, *inputs).penalty
  _, metrics = jax.jit(step)(state, batch)
  assert float(expected) > 0
  np.testing.assert_allclose(metrics['penalty'], expected, rtol=1e-5)


@pytest.mark.integration
def test_a_strong_l2_coupling_pulls_the_copies_together(smoke_config):
  """SGD on strength × Σ_g ||θ_g − θ̄||² scales each deviation by (1 − 2 lr strength)."""
  distances = {}
  for strength in (0.0, 1.0):
    config = _soft_config(smoke_config.copy_and_resolve_references(), strength=strength)
    # [CLS] through the pooler for every task: its task gradients are small enough that the
    # copies barely move without coupling (mean pooling's moved them apart fivefold in 3 SGD
    # steps, pair features' by a factor of 10^6).
    config.model.pooling, config.model.pooler = 'cls', True
    config.model.pair_features = False
    _, data, state, _, step = build_step(config, sgd_learning_rate=0.1)
    step = jax.jit(step)
    start = _distance(state.params)
    for batch in train_batches(data, config.sampling, 0, config.batch_size, 0, 3):
      state, _ = step(state, batch)
    distances[strength] = _distance(state.params) / start
  assert distances[0.0] > 0.9, distances  # the task gradients alone barely move the copies
  assert distances[1.0] < 0.5 * distances[0.0], distances


@pytest.mark.parametrize('args, weighting, message', [
    ({'groups': (0, 1)}, 'equal', 'groups has 2 entries for the 4 tasks'),
    ({'groups': (0, 2, 0, 2)}, 'equal', r'encoder ids must be the integers 0..G-1'),
    ({'groups': (0, 'a', 0, 1)}, 'equal', r'encoder ids must be the integers 0..G-1'),
    ({'penalty': 'l1'}, 'equal', "penalty 'l1' is not one of"),
    ({'strength': -1.0}, 'equal', 'strength must be >= 0'),
    ({}, 'pcgrad', 'config.weighting.name: .*shares none'),
])
def test_config_errors(smoke_config, args, weighting, message):
  config = _soft_config(smoke_config, **args)
  config.weighting.name = weighting
  tasks = config_lib.validate(config)
  with pytest.raises(ConfigError, match=message):
    config_lib.build_model(config, tasks, 100)


@pytest.mark.parametrize('variant, penalty, num_tasks', [
    ('soft', 'l2', 7), ('soft', 'trace', 7), ('soft,smoke', 'l2', 4)])
def test_sharing_config_builds_soft_sharing(variant, penalty, num_tasks):
  config = sharing.get_config(variant)
  config.model.args.penalty = penalty  # each field is listed, so the command line can set it
  model = config_lib.build_model(config, config_lib.validate(config), 100)
  assert isinstance(model, SoftSharing)
  assert (model.penalty, model.num_copies) == (penalty, num_tasks)
  with pytest.raises(ValueError, match='Unknown variant'):
    sharing.get_config('soft,large')
