"""Mesh sharding: the rules' layouts, FSDP's memory split, config errors, and the sharded
train step against the single-device step (the independent truth) on forced CPU devices."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from conftest import build_step
# The smoke config without dropout (its bits depend on the layout) or clipping.
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.errors import ConfigError
from mtl_jax.data.pipeline import train_batches
from mtl_jax.parallel import mesh as mesh_lib
from mtl_jax.evaluation.evaluate import evaluate, predictions
from mtl_jax.tasks import TaskKind
from mtl_jax.train.loop import TRAIN_KEYS, create_state, init_params, state_program
from mtl_jax.train.step import make_predict_step

LEARNING_RATE = 0.3  # SGD: every layout must form the same gradient
STEPS = 3


@pytest.fixture
def config(exact_config):
  exact_config.model.pooler = True  # its kernel has a sharding rule of its own
  # Pair tasks read the joint input's sentence feature: pair features at SGD lr 0.3 take the
  # similarity head to 1e7 in 3 steps, where rounding differences grow to percents
  # (test_default_features_step_on_the_mesh covers them at a stable learning rate).
  exact_config.model.pair_features = False
  return exact_config


def _mesh(config, data, fsdp, tensor):
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  config.mesh.devices = 0
  return mesh_lib.make_mesh(config.mesh), mesh_lib.axis_rules(config.mesh)


def _shardings(config, model, state, mesh, rules):
  boxed = jax.eval_shape(lambda: init_params(model, config.seed, config.data.seq_len))
  return mesh_lib.state_shardings(jax.eval_shape(lambda: state), boxed, mesh, rules)


def _specs(shardings) -> dict:
  layer = shardings.params['encoder']['layer_0']
  return {
      'query': layer['attention']['query']['kernel'].spec,
      'query_bias': layer['attention']['query']['bias'].spec,
      'attention_output': layer['attention']['output']['kernel'].spec,
      'intermediate': layer['intermediate']['kernel'].spec,
      'output': layer['output']['kernel'].spec,
      'layer_norm': layer['output_LayerNorm']['scale'].spec,
      'words': shardings.params['encoder']['embeddings']['word_embeddings']['embedding'].spec,
      'pooler': shardings.params['encoder']['pooler']['kernel'].spec,
      'head': shardings.params['head_sentiment']['classifier']['kernel'].spec,
  }


@pytest.mark.integration
def test_rules_give_the_tensor_and_fsdp_layout(config):
  """Megatron's split: q/k/v and the intermediate kernel by output, the attention output and
  output kernels by input; every matrix's model-width axis on fsdp; Adam's moments follow
  the parameters; scalars (step, Adam's count) are replicated."""
  _, _, state, model, _ = build_step(config)
  mesh, rules = _mesh(config, 2, 1, 4)
  shardings = _shardings(config, model, state, mesh, rules)
  assert _specs(shardings) == {
      'query': P('fsdp', 'tensor'), 'query_bias': P('tensor'),
      'attention_output': P('tensor', 'fsdp'), 'intermediate': P('fsdp', 'tensor'),
      'output': P('tensor', 'fsdp'), 'layer_norm': P('fsdp'), 'words': P(None, 'fsdp'),
      'pooler': P('fsdp', None), 'head': P('fsdp', None)}
  adam = shardings.opt_state[1][0]
  assert adam.mu['encoder']['layer_0']['attention']['query']['kernel'].spec == P('fsdp', 'tensor')
  assert adam.nu['encoder']['layer_0']['output']['kernel'].spec == P('tensor', 'fsdp')
  assert adam.count.spec == P() and shardings.step.spec == P()
  assert mesh_lib.batch_sharding(mesh, rules, 16).spec == P(('data', 'fsdp'))


@pytest.mark.integration
def test_config_rules_take_precedence(config):
  _, _, state, model, _ = build_step(config)
  config.mesh.rules = (('vocab', 'tensor'), ('mlp', None))
  mesh, rules = _mesh(config, 2, 1, 4)
  specs = _specs(_shardings(config, model, state, mesh, rules))
  assert specs['words'] == P('tensor', 'fsdp')
  assert specs['intermediate'] == P('fsdp', None)
  assert specs['query'] == P('fsdp', 'tensor')


@pytest.mark.integration
def test_fsdp_creates_the_state_in_place_sharded(config):
  """Under fsdp=8 each device holds 1/8 of every weight matrix and of Adam's moments, and the
  state created in its shardings equals the one created on one device, up to a few float32
  ulps: XLA may order the sharded initialiser's arithmetic differently (on an AVX-512 CPU,
  45 of 1024 weights differed by one ulp)."""
  tasks, _, _, model, _ = build_step(config)
  mesh, rules = _mesh(config, 1, 8, 1)
  optimizer = optax.adamw(1e-3)
  method = weighting.get('equal')
  args = (model, optimizer, method, len(tasks), config.seed, config.data.seq_len)
  init, _ = mesh_lib.placement(*state_program(*args), mesh, rules)
  state = init(None)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9),
               state.params, create_state(*args).params)
  kernel = state.params['encoder']['layer_0']['intermediate']['kernel']
  mu = state.opt_state[0].mu['encoder']['layer_0']['intermediate']['kernel']
  for x in (kernel, mu):
    assert x.shape == (32, 64)
    assert {s.data.shape for s in x.addressable_shards} == {(4, 64)}
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state.params))
  total = sum(x.nbytes for x in jax.tree.leaves(state.params))
  assert per_device < total / 7  # the unsharded remainder is the few tiny head biases


def _adversarial(config):
  config.adversary.enabled = True
  config.adversary.weight = 0.5
  return weighting.get('equal')


@pytest.mark.integration
@pytest.mark.parametrize('make_method', [
    lambda c: weighting.get('equal'),
    lambda c: weighting.get('uncertainty'),
    lambda c: weighting.get('mgda'),
    lambda c: weighting.get('pcgrad'),  # its task order comes from the step's key: the same
    _adversarial,
], ids=['equal', 'uncertainty', 'mgda', 'pcgrad', 'adversarial'])
def test_mesh_step_equals_single_device_step(config, make_method):
  """Several steps on one global batch: the same losses and parameters on one device and on
  a (data 2, fsdp 2, tensor 2) mesh, where every axis splits something."""
  method = make_method(config)
  _, data, state, model, step = build_step(config, method, sgd_learning_rate=LEARNING_RATE)
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  batch = {k: batch[k] for k in TRAIN_KEYS}

  def run(train_step, state):
    losses = []
    for _ in range(STEPS):
      state, metrics = train_step(state, batch)
      losses.append(np.asarray(metrics['task_losses']))
    return state, np.stack(losses)

  single, single_losses = run(jax.jit(step), state)
  moved = max(float(np.abs(x - y).max())
              for x, y in zip(jax.tree.leaves(single.params), jax.tree.leaves(state.params)))
  assert moved > 1e-3, 'the steps did not move the parameters: the comparison is vacuous'
  mesh, rules = _mesh(config, 2, 2, 2)
  shardings = _shardings(config, model, state, mesh, rules)
  sharded_step = mesh_lib.shard_step(step, mesh, shardings,
                                     mesh_lib.batch_sharding(mesh, rules, config.batch_size))
  # Copies: the sharded step donates its input, and device_put may reuse a buffer.
  copy = jax.device_put(jax.tree.map(lambda x: x.copy(), state), shardings)
  sharded, losses = run(sharded_step, copy)
  np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
  for part in ('params', 'weighting', 'terms'):  # terms: the adversary's, when it is on
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6,
                                                         err_msg=part),
                 getattr(sharded, part), getattr(single, part))
  assert (sharded.params['encoder']['layer_0']['attention']['query']['kernel'].sharding
          == shardings.params['encoder']['layer_0']['attention']['query']['kernel'])


@pytest.mark.integration
def test_default_features_step_on_the_mesh(exact_config):
  """The default model's features (mean pooling, pair features, no pooler) under data and
  tensor sharding: the same SGD steps as on one device, at a learning rate where the steps
  stay stable."""
  _, data, state, model, step = build_step(exact_config, sgd_learning_rate=0.01)
  batch = next(train_batches(data, exact_config.sampling, 0, exact_config.batch_size, 0, 1))
  batch = {k: batch[k] for k in TRAIN_KEYS}
  single = state
  for _ in range(STEPS):
    single, _ = jax.jit(step)(single, batch)
  moved = max(float(np.abs(x - y).max())
              for x, y in zip(jax.tree.leaves(single.params), jax.tree.leaves(state.params)))
  assert moved > 1e-3, 'the steps did not move the parameters: the comparison is vacuous'
  mesh, rules = _mesh(exact_config, 2, 1, 4)
  shardings = _shardings(exact_config, model, state, mesh, rules)
  sharded_step = mesh_lib.shard_step(step, mesh, shardings,
                                     mesh_lib.batch_sharding(mesh, rules,
                                                             exact_config.batch_size))
  sharded = jax.device_put(jax.tree.map(lambda x: x.copy(), state), shardings)
  for _ in range(STEPS):
    sharded, _ = sharded_step(sharded, batch)
  jax.tree.map(lambda x, y, p: np.testing.assert_allclose(x - p, y - p, rtol=1e-3, atol=1e-6),
               sharded.params, single.params, state.params)


@pytest.mark.parametrize('sizes,message', [
    ((3, 2, 1), r'config\.mesh: data 3 x fsdp 2 x tensor 1 = 6 devices, but there are 8'),
    ((-1, 3, 1), r'config\.mesh: data 2 x fsdp 3 x tensor 1 = 6 devices, but there are 8'),
    ((-1, -1, 2), r'config\.mesh: only one axis may be -1'),
    ((8, 0, 1), r'config\.mesh\.fsdp: must be a positive integer or -1, got 0'),
])
def test_bad_mesh_is_a_config_error(config, sizes, message):
  with pytest.raises(ConfigError, match=message):
    _mesh(config, *sizes)


@pytest.mark.integration
def test_sharded_evaluation_equals_one_device(config):
  """The mesh's predictor (sharded parameters, each process feeding its rows, the last batch
  padded) predicts and scores as the one-device predictor does."""
  tasks, data, state, model, _ = build_step(config)
  one_device = jax.jit(make_predict_step(model, tasks))
  expected = evaluate(one_device, state.params, tasks, data.eval, 24)
  for layout in ((4, 2, 1), (2, 1, 4)):
    mesh, rules = _mesh(config, *layout)
    shardings = _shardings(config, model, state, mesh, rules)
    params = jax.device_put(state.params, shardings.params)
    predict = mesh_lib.predictor(make_predict_step(model, tasks), mesh, rules,
                                 shardings.params, 24)
    for task in tasks:
      table = data.eval[task.name]['validation']
      assert len(table['input_ids']) % 24  # a padded last batch
      got = predictions(predict, params, task, table, 24)['pred']
      want = predictions(one_device, state.params, task, table, 24)['pred']
      if task.kind is TaskKind.REGRESSION:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
      else:
        np.testing.assert_array_equal(got, want)
    scores = evaluate(predict, params, tasks, data.eval, 24)  # a correlation near 0: atol
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4),
                 scores, expected)


def test_bad_rule_and_indivisible_batch_are_config_errors(config):
  mesh, rules = _mesh(config, 4, 2, 1)
  with pytest.raises(ConfigError, match=r'config\.batch_size: 12 does not split over the 8'):
    mesh_lib.batch_sharding(mesh, rules, 12)
  config.eval_batch_size = 20
  with pytest.raises(ConfigError, match=r'config\.eval_batch_size: 20 does not split over '):
    config_lib.validate(config, 8)
  config.mesh.rules = (('mlp', 'model'),)
  with pytest.raises(ConfigError, match=r'config\.mesh\.rules: \(\'mlp\', \'model\'\)'):
    mesh_lib.axis_rules(config.mesh)


def test_one_device_is_a_one_by_one_mesh(config):
  config.mesh.data = -1
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1}


def test_mesh_devices_takes_the_first_devices_and_refuses_more_than_there_are(config):
  config.mesh.data, config.mesh.devices = -1, 2
  mesh = mesh_lib.make_mesh(config.mesh)
  assert list(mesh.devices.flat) == jax.devices()[:2] and dict(mesh.shape)['data'] == 2
  config_lib.validate(config, 8)
  config.mesh.devices = 9
  with pytest.raises(ConfigError, match=r'config\.mesh\.devices: 9 exceeds the 8 devices'):
    config_lib.validate(config, 8)
  with pytest.raises(ConfigError, match=r'config\.mesh\.devices: 9 exceeds the 8 devices'):
    mesh_lib.make_mesh(config.mesh)
  config.mesh.devices = -1
  with pytest.raises(ConfigError, match=r'config\.mesh\.devices: must be >= 0, got -1'):
    config_lib.validate(config)


def test_decoder_rules_shard_heads_and_width_and_keep_indivisible_kv_heads_whole():
  """SmolLM2's shape of heads (9 query, 3 key/value) on tensor 3 and on tensor 2: the query
  heads split where 3 divides them; the 3 KV heads split on tensor 3, stay whole on
  tensor 2 (as would the 9 query heads), and the model width is split on fsdp."""
  from mtl_jax.models.decoder import Decoder, DecoderConfig, segment_mask
  cfg = DecoderConfig(vocab_size=50, hidden_size=36, num_layers=2, num_heads=9,
                      num_kv_heads=3, head_dim=4, intermediate_size=24)
  tokens = jax.numpy.zeros((1, 4), jax.numpy.int32)
  positions = jax.numpy.arange(4)[None]
  boxed = jax.eval_shape(lambda: Decoder(cfg).init(
      jax.random.key(0), tokens, positions, segment_mask(tokens + 1, positions)))['params']
  devices = jax.devices()
  for tensor, kv in ((3, 'tensor'), (2, None)):
    mesh = jax.make_mesh((1, 2, tensor), mesh_lib.MESH_AXES, devices=devices[:2 * tensor],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shapes = jax.tree.map(lambda b: jax.ShapeDtypeStruct(b.value.shape, b.value.dtype), boxed,
                          is_leaf=lambda x: hasattr(x, 'names'))
    params = mesh_lib.state_shardings(shapes, boxed, mesh, mesh_lib.AXIS_RULES)
    attention = params['layers']['attention']
    assert attention['q']['kernel'].spec == P(None, 'fsdp', kv, None)
    assert attention['k']['kernel'].spec == P(None, 'fsdp', kv, None)
    assert attention['o']['kernel'].spec == P(None, kv, None, 'fsdp')
    assert params['layers']['mlp']['down']['kernel'].spec == P(
        None, 'tensor' if 24 % tensor == 0 else None, 'fsdp')
    assert params['embed']['embedding'].spec == P(None, 'fsdp')
