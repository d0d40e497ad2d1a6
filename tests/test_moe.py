"""Mixture-of-experts layers and architectures (mtl_jax/models/moe.py) against numpy
implementations of the papers' equations: MMoE/OMoE (Ma et al. 2018, eq. 7-8) and PLE
(Tang et al. 2020, eq. 2-6)."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.mmoe_synthetic import dataset, task_weights
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import train_batches
from mtl_jax.errors import ConfigError
from mtl_jax.models.encoder import EncoderConfig
from mtl_jax.models.moe import MMoE, PLE, Expert, MMoESharing, PLESharing
from mtl_jax.tasks import Task, TaskKind
from conftest import build_step

D, H, E, T = 6, 5, 4, 3


def _x(shape=(2, 7, D), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _np(tree):
  return jax.tree.map(np.array, tree)  # writable copies


def _softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _relu_layer(p, x, *index):
  """relu(x W + b) with the kernel and bias of copy `index` of a stacked Dense."""
  return np.maximum(x @ p['kernel'][index] + p['bias'][index], 0.0)


def _mmoe(num_tasks=T, shared_gate=False, x=None):
  x = _x() if x is None else x
  model = MMoE(num_tasks, E, H, shared_gate)
  return model, model.init(jax.random.key(0), x), x


def test_gates_are_a_softmax_per_task():
  model, variables, x = _mmoe()
  rows = x.reshape(-1, D)
  gates = np.asarray(model.apply(variables, rows, method=lambda m, r: m.gates(r)))
  chex.assert_shape(gates, (T, 14, E))
  np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
  p = _np(variables['params']['gates']['dense'])
  for k in range(T):
    np.testing.assert_allclose(gates[k], _softmax(np.asarray(rows) @ p['kernel'][k]
                                                  + p['bias'][k]), rtol=1e-5, atol=1e-6)


def test_stacked_experts_equal_a_numpy_mlp_and_a_standalone_expert_each():
  model, variables, x = _mmoe()
  rows = x.reshape(-1, D)
  experts = np.asarray(model.apply(variables, rows, method=lambda m, r: m.experts(r)))
  chex.assert_shape(experts, (E, 14, H))
  p = _np(variables['params']['experts']['dense'])
  assert not np.allclose(p['kernel'][0], p['kernel'][1])  # independently initialised
  for i in range(E):
    np.testing.assert_allclose(experts[i], _relu_layer(p, np.asarray(rows), i), rtol=1e-5,
                               atol=1e-6)
    alone = Expert(H).apply({'params': {'dense': jax.tree.map(lambda a: a[i], p)}}, rows)
    np.testing.assert_allclose(experts[i], alone, rtol=1e-6, atol=1e-6)


def test_mmoe_is_the_gated_sum_of_experts_on_token_sequences():
  """f^k(x) = Σ_i g^k(x)_i f_i(x), token by token on a (B, S, D) input."""
  model, variables, x = _mmoe()
  out = np.asarray(model.apply(variables, x))
  chex.assert_shape(out, (T, 2, 7, H))
  p = _np(variables['params'])
  xs = np.asarray(x)
  for k in range(T):
    g = _softmax(xs @ p['gates']['dense']['kernel'][k] + p['gates']['dense']['bias'][k])
    want = sum(g[..., i:i + 1] * _relu_layer(p['experts']['dense'], xs, i) for i in range(E))
    np.testing.assert_allclose(out[k], want, rtol=1e-5, atol=1e-6)


def test_a_one_hot_gate_selects_its_expert():
  model, variables, x = _mmoe()
  params = _np(variables['params'])
  chosen = 2
  params['gates']['dense']['kernel'][1] = 0.0
  params['gates']['dense']['bias'][1] = 100.0 * np.eye(E)[chosen]
  out = np.asarray(model.apply({'params': params}, x))
  np.testing.assert_allclose(out[1], _relu_layer(params['experts']['dense'], np.asarray(x),
                                                 chosen), rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[0], out[1])


def test_omoe_gives_every_task_one_mixture_mmoe_does_not():
  model, variables, x = _mmoe(shared_gate=True)
  chex.assert_shape(variables['params']['gates']['dense']['kernel'], (1, D, E))
  out = np.asarray(model.apply(variables, x))
  for k in range(1, T):
    np.testing.assert_array_equal(out[k], out[0])
  model, variables, x = _mmoe()
  out = np.asarray(model.apply(variables, x))
  assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])


def _ple_numpy(params, x, num_tasks, task_experts, levels):
  """PLE by the paper's equations, one expert and one task at a time (Tang et al. 2020,
  eq. 5-6); the shared gate's experts are ordered task 1's, ..., task T's, then shared."""
  tasks, shared = [x] * num_tasks, x
  for level in range(levels):
    p = params[f'level_{level}']
    own = [[_relu_layer(p['task_experts']['dense'], tasks[k], k, i)
            for i in range(task_experts)] for k in range(num_tasks)]
    common = [_relu_layer(p['shared_experts']['dense'], shared, i)
              for i in range(p['shared_experts']['dense']['bias'].shape[0])]
    gates = p['task_gates']['dense']
    outputs = []
    for k in range(num_tasks):
      g = _softmax(tasks[k] @ gates['kernel'][k] + gates['bias'][k])
      outputs.append(sum(g[:, [i]] * e for i, e in enumerate(own[k] + common)))
    if level < levels - 1:
      gate = p['shared_gate']['dense']
      g = _softmax(shared @ gate['kernel'] + gate['bias'])
      shared = sum(g[:, [i]] * e for i, e in enumerate(sum(own, []) + common))
    tasks = outputs
  return np.stack(tasks)


@pytest.mark.integration
@pytest.mark.parametrize('levels', [1, 2, 3])
def test_ple_matches_the_papers_equations(levels):
  x = _x((9, D))
  model = PLE(T, 2, 3, H, levels)
  variables = model.init(jax.random.key(1), x)
  params = _np(variables['params'])
  assert sorted(params) == [f'level_{j}' for j in range(levels)]
  assert 'shared_gate' not in params[f'level_{levels - 1}']  # the last level has none
  np.testing.assert_allclose(model.apply(variables, x),
                             _ple_numpy(params, np.asarray(x), T, 2, levels),
                             rtol=1e-5, atol=1e-6)


def _grad_norms(levels, task):
  """|∂ Σ output_task / ∂ θ| for every task-expert copy (level, owner) and shared experts."""
  x = _x((9, D))
  model = PLE(T, 2, 2, H, levels)
  params = model.init(jax.random.key(2), x)['params']
  grads = jax.grad(lambda p: model.apply({'params': p}, x)[task].sum())(params)
  own = {(level, k): float(jnp.abs(grads[f'level_{level}']['task_experts']['dense']['kernel'][k]
                                   ).sum())
         for level in range(levels) for k in range(T)}
  shared = [float(jnp.abs(grads[f'level_{level}']['shared_experts']['dense']['kernel']).sum())
            for level in range(levels)]
  return own, shared


@pytest.mark.integration
def test_cgc_task_reads_its_own_and_shared_experts_only():
  own, shared = _grad_norms(levels=1, task=1)
  assert own[(0, 0)] == 0.0 and own[(0, 2)] == 0.0  # exactly: not wired, not just small
  assert own[(0, 1)] > 0.0 and shared[0] > 0.0


@pytest.mark.integration
def test_ple_lower_levels_reach_every_task_through_the_shared_gate():
  own, shared = _grad_norms(levels=2, task=1)
  assert own[(1, 0)] == 0.0 and own[(1, 2)] == 0.0  # the last level is a CGC
  assert own[(1, 1)] > 0.0 and shared[1] > 0.0
  # Level 1's shared gate mixes all experts into level 2's shared input.
  assert own[(0, 0)] > 0.0 and own[(0, 2)] > 0.0 and shared[0] > 0.0


CFG = EncoderConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                    intermediate_size=32, max_len=12, dropout_rate=0.0,
                    attention_dropout_rate=0.0)
TAG = Task('tag', TaskKind.TAGGING, 5, ('a',), 'tag', ('token_accuracy',), 'test')
CLS = Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test')


def _inputs():
  ids = jnp.asarray(np.random.default_rng(3).integers(1, 40, (2, 12)), jnp.int32)
  return ids, jnp.zeros_like(ids), jnp.ones_like(ids)


@pytest.mark.integration
@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_sentence_heads_read_the_mixture_of_the_full_sequence(pooling):
  """Without tagging tasks and with [CLS] pooling only [CLS] goes through the experts; that
  must equal the full sequence's mixture at position 0 (what a model with a tagging task
  computes). Mean pooling runs every token through them and averages the real ones."""
  cfg = dataclasses.replace(CFG, pooling=pooling)
  ids, segments, mask = _inputs()
  inputs = (ids, segments, mask.at[0, 8:].set(0))  # row 0 has 4 padding tokens
  with_tags = MMoESharing(cfg, (TAG, CLS), num_experts=3, expert_hidden=8, shared_gate=True)
  params = nn.unbox(with_tags.init(jax.random.key(0), *inputs))['params']
  out = with_tags.apply({'params': params}, *inputs)
  chex.assert_shape(out.tasks['tag'], (2, 12, 5))
  alone = MMoESharing(cfg, (CLS,), num_experts=3, expert_hidden=8, shared_gate=True)
  sentence_only = {k: v for k, v in params.items() if k != 'head_tag'}
  representation = alone.apply({'params': sentence_only}, *inputs, method='encode')
  length = 1 if pooling == 'cls' else 12
  chex.assert_shape(representation['sequence'], (2, length, CFG.hidden_size))
  if pooling == 'mean':  # the padding tokens of row 0 do not count
    padded = (ids.at[0, 8:].set(7), segments, inputs[2])
    np.testing.assert_allclose(alone.apply({'params': sentence_only}, *padded).tasks['cls'],
                               out.tasks['cls'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(alone.apply({'params': sentence_only}, *inputs).tasks['cls'],
                             out.tasks['cls'], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_adversary_reads_the_encoders_sentence_feature():
  inputs = _inputs()
  model = PLESharing(CFG, (TAG, CLS), shared_features=True, expert_hidden=8)
  params = nn.unbox(model.init(jax.random.key(0), *inputs))['params']
  assert model.shared_params == ('encoder',)
  out = model.apply({'params': params}, *inputs)
  pooled = model.apply({'params': params}, *inputs, method='encode')['pooled']
  chex.assert_shape(out.shared, (2, CFG.hidden_size))
  np.testing.assert_array_equal(out.shared, pooled)
  plain = PLESharing(CFG, (TAG, CLS), expert_hidden=8)
  assert plain.apply({'params': params}, *inputs).shared is None

@pytest.mark.integration
@pytest.mark.parametrize('architecture,args', [
    ('mmoe', {'num_experts': 3, 'expert_hidden': 16}),
    ('ple', {'task_experts': 1, 'shared_experts': 2, 'expert_hidden': 16, 'levels': 2}),
])
def test_train_step_learns_a_fixed_batch(smoke_config, architecture, args):
  smoke_config.model.architecture = architecture
  smoke_config.model.args.update(args)
  smoke_config.optimizer.learning_rate = 3e-3
  smoke_config.optimizer.schedule = 'constant'
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  _, data, state, _, step = build_step(smoke_config)
  step = jax.jit(step)
  batch = next(train_batches(data, smoke_config.sampling, 0, 16, 0, 1))
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(np.asarray(metrics['task_losses']))
  chex.assert_tree_all_finite(metrics)
  assert losses[-1].sum() < 0.5 * losses[0].sum(), (losses[0], losses[-1])


@pytest.mark.integration
def test_gradient_method_on_the_representation_updates_the_experts(smoke_config):
  """Mode 'representation': per-task gradients w.r.t. the encoder output; the experts and
  gates are outside it and still get the step's head update."""
  smoke_config.model.architecture = 'ple'
  smoke_config.model.args.update({'expert_hidden': 16, 'levels': 2})
  _, data, state, _, step = build_step(smoke_config, weighting.get('pcgrad'),
                                       mode='representation', sgd_learning_rate=0.1)
  batch = next(train_batches(data, smoke_config.sampling, 0, 16, 0, 1))
  new_state, metrics = jax.jit(step)(state, batch)
  chex.assert_tree_all_finite(metrics)
  for part in ('encoder', 'mixture'):
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                         state.params[part], new_state.params[part])
    assert max(jax.tree.leaves(moved)) > 0.0, part


@pytest.mark.parametrize('architecture,args,message', [
    ('mmoe', {'num_experts': 0}, 'num_experts must be a positive integer'),
    ('mmoe', {'expert_hidden': -3}, 'expert_hidden must be a positive integer'),
    ('mmoe', {'shared_gate': 'yes'}, 'shared_gate must be True or False'),
    ('mmoe', {'levels': 2}, r"no field\(s\) \['levels'\]"),
    ('ple', {'levels': 0}, 'levels must be a positive integer'),
    ('ple', {'shared_experts': 0}, 'shared_experts must be a positive integer'),
    ('ple', {'task_experts': 1.5}, 'task_experts must be a positive integer'),
])
def test_bad_fields_are_config_errors(smoke_config, architecture, args, message):
  smoke_config.model.architecture = architecture
  smoke_config.model.args.update(args)
  tasks = config_lib.validate(smoke_config)
  with pytest.raises(ConfigError, match=f'config.model.args: {architecture}: '
                                                   f'.*{message}'):
    config_lib.build_model(smoke_config, tasks, 100)


def test_tasks_below_the_last_layer_are_config_errors(smoke_config):
  smoke_config.model.architecture = 'mmoe'
  smoke_config.task_depths = (1, -1, -1, -1)
  tasks = config_lib.validate(smoke_config)
  with pytest.raises(ConfigError, match=r"last encoder layer; tasks \['pos'\]"):
    config_lib.build_model(smoke_config, tasks, 100)


def test_synthetic_task_weights_and_labels_follow_ma_et_al():
  """|w_k| = c, w1ᵀw2 = c²p; at p = 1 the two labels differ only by their noise."""
  for p in (1.0, 0.5, 0.0):
    w = np.asarray(task_weights(jax.random.key(0), 20, p, 2.0))
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), [2.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(w[0] @ w[1], 4.0 * p, atol=1e-5)
  _, y = dataset(jax.random.key(1), 1.0, 4000, 20, 10, 1.0, noise_std=0.1)
  np.testing.assert_allclose(np.std(np.asarray(y[0] - y[1])), 0.1 * np.sqrt(2), rtol=0.05)
  _, y = dataset(jax.random.key(1), 0.0, 4000, 20, 10, 1.0, noise_std=0.1)
  assert abs(np.corrcoef(np.asarray(y))[0, 1]) < 0.1
