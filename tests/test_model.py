"""Encoder and heads: shapes, padding invariance, dropout determinism, depth selection."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models.encoder import Encoder, EncoderConfig
from mtl_jax.models.multitask import HardSharing
from mtl_jax.tasks import Task, TaskKind

CFG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=4,
                    intermediate_size=64, max_len=24, dropout_rate=0.1,
                    attention_dropout_rate=0.1)
TASKS = (
    Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test'),
    Task('reg', TaskKind.REGRESSION, 1, ('a', 'b'), 'reg', ('pearson',), 'test', depth=2),
    Task('tag', TaskKind.TAGGING, 5, ('a',), 'tag', ('token_accuracy',), 'test', depth=1),
)


def _inputs(batch=2, length=16, real=10, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, CFG.vocab_size, (batch, length)).astype(np.int32)
  mask = (np.arange(length) < real).astype(np.int32)[None].repeat(batch, 0)
  segments = (np.arange(length) >= real // 2).astype(np.int32)[None].repeat(batch, 0) * mask
  return jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask)


def test_encoder_shapes_and_layout():
  ids, seg, mask = _inputs()
  encoder = Encoder(CFG)
  params = nn.unbox(encoder.init(jax.random.key(0), ids, seg, mask))['params']
  out = encoder.apply({'params': params}, ids, seg, mask)
  assert len(out.hidden_states) == CFG.num_layers + 1
  chex.assert_shape(list(out.hidden_states), (2, 16, CFG.hidden_size))
  chex.assert_shape(out.pooled, (2, CFG.hidden_size))
  chex.assert_tree_all_finite(out)
  # BERT layout: the names an importer maps onto.
  assert set(params) == {'embeddings', 'pooler', 'layer_0', 'layer_1', 'layer_2'}
  assert set(params['layer_0']['attention']) == {'query', 'key', 'value', 'output'}
  chex.assert_shape(params['layer_0']['intermediate']['kernel'], (32, 64))
  chex.assert_shape(params['embeddings']['word_embeddings']['embedding'], (50, 32))


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_padding_tokens_do_not_change_outputs(pooling):
  ids, seg, mask = _inputs()
  model = HardSharing(dataclasses.replace(CFG, pooling=pooling), TASKS)
  params = model.init(jax.random.key(0), ids, seg, mask)['params']
  out = model.apply({'params': params}, ids, seg, mask).tasks
  # Different token ids at padded positions, and a longer padded tail.
  garbage = jnp.where(mask > 0, ids, 7)
  out_garbage = model.apply({'params': params}, garbage, seg, mask).tasks
  longer = [jnp.pad(x, ((0, 0), (0, 8)), constant_values=3 if i == 0 else 0)
            for i, x in enumerate((ids, seg, mask))]
  out_longer = model.apply({'params': params}, *longer).tasks
  for other in (out_garbage, out_longer):
    np.testing.assert_allclose(other['cls'], out['cls'], atol=1e-5)
    np.testing.assert_allclose(other['reg'], out['reg'], atol=1e-5)
    np.testing.assert_allclose(other['tag'][:, :10], out['tag'][:, :10], atol=1e-5)


def test_head_shapes_and_depths():
  ids, seg, mask = _inputs()
  model = HardSharing(CFG, TASKS)
  variables = model.init(jax.random.key(0), ids, seg, mask)
  out = model.apply(variables, ids, seg, mask).tasks
  chex.assert_shape(out['cls'], (2, 3))
  chex.assert_shape(out['reg'], (2,))
  chex.assert_shape(out['tag'], (2, 16, 5))
  # A head supervised at depth 1 depends on layer 0 only: perturbing layer 2 leaves it fixed.
  params = variables['params']
  bumped = jax.tree.map(lambda x: x, params)
  bumped['encoder']['layer_2'] = jax.tree.map(lambda x: x + 1.0, params['encoder']['layer_2'])
  out2 = model.apply({'params': bumped}, ids, seg, mask).tasks
  np.testing.assert_array_equal(out2['tag'], out['tag'])
  np.testing.assert_array_equal(out2['reg'], out['reg'])  # depth 2 reads layer_1's output
  assert not np.allclose(out2['cls'], out['cls'])


@pytest.mark.integration
def test_dropout_is_deterministic_given_the_key():
  ids, seg, mask = _inputs()
  model = HardSharing(CFG, TASKS)
  variables = model.init(jax.random.key(0), ids, seg, mask)
  run = lambda k: model.apply(variables, ids, seg, mask, deterministic=False,
                              rngs={'dropout': jax.random.key(k)}).tasks
  chex.assert_trees_all_equal(run(1), run(1))
  assert not np.allclose(run(1)['cls'], run(2)['cls'])


def test_depth_beyond_encoder_is_an_error():
  ids, seg, mask = _inputs()
  deep = Task('deep', TaskKind.CLASSIFICATION, 2, ('a',), 'deep', ('accuracy',), 'test', depth=4)
  with pytest.raises(ValueError, match='depth 4'):
    HardSharing(CFG, (deep,)).init(jax.random.key(0), ids, seg, mask)


@pytest.mark.parametrize('pooler', [False, True])
def test_mean_pooling_reads_the_mean_of_the_real_tokens(pooler):
  """pooling='mean': a sentence head at depth d reads layer d's token states averaged over
  the attended tokens (numpy's masked mean of the encoder's own hidden states); the pooler,
  when on, takes that mean instead of [CLS]."""
  cfg = dataclasses.replace(CFG, pooling='mean', pooler=pooler)
  ids, seg, mask = _inputs(real=7)
  mask = mask.at[1, 9:].set(1)  # rows of different lengths
  variables = nn.unbox(HardSharing(cfg, TASKS).init(jax.random.key(0), ids, seg, mask))
  representation = HardSharing(cfg, TASKS).apply(variables, ids, seg, mask, method='encode')
  hidden = Encoder(cfg).apply({'params': variables['params']['encoder']}, ids, seg,
                              mask).hidden_states
  m = np.asarray(mask, np.float64)[..., None]
  mean = lambda h: (np.asarray(h, np.float64) * m).sum(1) / m.sum(1)
  np.testing.assert_allclose(representation['mean_2'], mean(hidden[2]), rtol=1e-5, atol=1e-6)
  if pooler:
    p = variables['params']['encoder']['pooler']
    expected = np.tanh(mean(hidden[3]) @ np.asarray(p['kernel']) + np.asarray(p['bias']))
    np.testing.assert_allclose(representation['pooled'], expected, rtol=1e-4, atol=1e-6)
  else:
    np.testing.assert_allclose(representation['mean_3'], mean(hidden[3]), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='pooling'):
    dataclasses.replace(CFG, pooling='max')


def _pair_reference(hidden, segments, mask):
  """numpy's [u, v, |u - v|, u * v] of each segment's masked mean (InferSent)."""
  h = np.asarray(hidden, np.float64)
  means = []
  for segment in (0, 1):
    m = ((np.asarray(mask) > 0) & (np.asarray(segments) == segment))[..., None]
    means.append((h * m).sum(1) / m.sum(1))
  u, v = means
  return np.concatenate([u, v, np.abs(u - v), u * v], axis=-1)


def test_pair_features_compare_the_two_segments_mean_states():
  """pair_features: a pair task's head reads [u, v, |u - v|, u * v] of its layer's mean
  token states per segment, padding excluded; a one-input task still reads its sentence
  feature. Swapping which tokens form each segment permutes u and v."""
  cfg = dataclasses.replace(CFG, pooling='mean', pooler=False, pair_features=True)
  ids, seg, mask = _inputs(real=12)
  mask = mask.at[1, 12:14].set(1)  # rows of different lengths; the extra tokens: segment 1
  seg = seg.at[1, 12:14].set(1)
  model = HardSharing(cfg, TASKS)
  variables = nn.unbox(model.init(jax.random.key(0), ids, seg, mask))
  representation = model.apply(variables, ids, seg, mask, method='encode')
  assert model.keys() == {'cls': 'mean_3', 'reg': 'pair_2', 'tag': 'sequence_1'}
  hidden = Encoder(cfg).apply({'params': variables['params']['encoder']}, ids, seg,
                              mask).hidden_states
  np.testing.assert_allclose(representation['pair_2'], _pair_reference(hidden[2], seg, mask),
                             rtol=1e-5, atol=1e-6)
  outputs = model.apply(variables, ids, seg, mask)
  head = variables['params']['head_reg']['classifier']
  expected = representation['pair_2'] @ head['kernel'] + head['bias']
  np.testing.assert_allclose(outputs.tasks['reg'], expected[:, 0], rtol=1e-5, atol=1e-6)


def test_pair_head_hidden_is_a_relu_layer_on_pair_heads_only():
  """pair_head_hidden: a pair task's head is relu(f W1 + b1) W2 + b2 on its pair features
  (InferSent's classifier), computed here in numpy; the other heads stay linear."""
  cfg = dataclasses.replace(CFG, pooling='mean', pooler=False, pair_features=True,
                            pair_head_hidden=7)
  ids, seg, mask = _inputs(real=12)
  model = HardSharing(cfg, TASKS)
  variables = nn.unbox(model.init(jax.random.key(0), ids, seg, mask))
  params = variables['params']
  assert set(params['head_reg']) == {'hidden', 'classifier'}
  assert set(params['head_cls']) == set(params['head_tag']) == {'classifier'}
  chex.assert_shape(params['head_reg']['hidden']['kernel'], (4 * 32, 7))
  features = np.asarray(model.apply(variables, ids, seg, mask, method='encode')['pair_2'])
  hidden, out = params['head_reg']['hidden'], params['head_reg']['classifier']
  expected = (np.maximum(features @ np.asarray(hidden['kernel']) + np.asarray(hidden['bias']), 0)
              @ np.asarray(out['kernel']) + np.asarray(out['bias']))
  np.testing.assert_allclose(model.apply(variables, ids, seg, mask).tasks['reg'],
                             expected[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize('architecture,args,width', [
    ('hierarchical', {'task_layers': 1}, 4 * 32),
    ('mmoe', {'expert_hidden': 16}, 4 * 16),
    ('shared_private', {'private_hidden_size': 8, 'private_heads': 2}, 4 * 32 + 4 * 8),
])
def test_every_architecture_gives_pair_tasks_pair_features(architecture, args, width):
  """Architectures that compute their own token states for a task (task layers, experts, a
  private encoder) form a pair task's features from them as the encoder's: 4 times the
  states' width (shared-private: the shared pair features and the private ones)."""
  from mtl_jax.models import architectures
  cfg = dataclasses.replace(CFG, pooling='mean', pooler=False, pair_features=True)
  tasks = tuple(dataclasses.replace(t, depth=-1) for t in TASKS)
  model = architectures.build(architecture, cfg, tasks, args)
  ids, seg, mask = _inputs(real=12)
  variables = nn.unbox(model.init(jax.random.key(0), ids, seg, mask))
  assert variables['params']['head_reg']['classifier']['kernel'].shape[0] == width
  assert model.apply(variables, ids, seg, mask).tasks['reg'].shape == (2,)
