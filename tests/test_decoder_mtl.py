"""The decoder as a sharing architecture's backbone (models/backbone.py): heads read the last
real token (tagging heads every token), hierarchical tasks their depth, a tiny decoder learns
the built-in suite through `fit`, and the architectures that cannot take it refuse it."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import load_task_data, train_batches
from mtl_jax.errors import ConfigError
from mtl_jax.models import architectures, rope
from mtl_jax.models.backbone import DecoderBackboneConfig
from mtl_jax.models.decoder import (Decoder, DecoderConfig, DecoderLayer, LayerInputs,
                                    segment_mask)
from mtl_jax.models.hierarchical import Hierarchical
from mtl_jax.models.multitask import HardSharing
from mtl_jax.objectives import adversarial
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.gradients import task_gradient_like
from mtl_jax.train.loop import fit
from conftest import build_step

DECODER = DecoderConfig(vocab_size=40, hidden_size=16, num_layers=3, num_heads=4,
                        num_kv_heads=2, intermediate_size=32, max_position_embeddings=16)
CFG = DecoderBackboneConfig(DECODER)
TASKS = (
    Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test'),
    Task('pair', TaskKind.REGRESSION, 1, ('a', 'b'), 'pair', ('pearson',), 'test', depth=2),
    Task('tag', TaskKind.TAGGING, 5, ('a',), 'tag', ('token_accuracy',), 'test', depth=1),
)
LENGTHS = (12, 7, 1)  # real tokens of each row, right-padded to 12


def _inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(3, DECODER.vocab_size, (len(LENGTHS), 12)).astype(np.int32)
  mask = (np.arange(12)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
  segments = (np.arange(12)[None] >= 3).astype(np.int32) * mask  # token types: not read
  return jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask)


def _params(model, inputs):
  return nn.unbox(model.init(jax.random.key(0), *inputs))['params']


def _head(params, name, x):
  head = params[f'head_{name}']['classifier']
  out = np.asarray(x) @ np.asarray(head['kernel']) + np.asarray(head['bias'])
  return out if out.shape[-1] > 1 else out[..., 0]


def _decoder_states(params, inputs):
  """The Decoder's own (final hidden states, (L, B, S, D) layer states) of the rows."""
  ids, _, mask = inputs
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  out = Decoder(DECODER, keep_states=True).apply(
      {'params': params['encoder']}, ids, positions, segment_mask(mask, positions))
  return np.asarray(out.hidden), np.asarray(out.layer_states)


def _at_depth(task: Task, depth: int) -> Task:
  return Task(**{**task.__dict__, 'depth': depth})


def _last(states):
  """(B, S, D) -> (B, D) at each row's last real token."""
  return states[np.arange(len(LENGTHS)), np.array(LENGTHS) - 1]


@pytest.mark.integration
def test_hard_sharing_heads_read_the_decoder_s_last_real_token():
  inputs = _inputs()
  flat = tuple(_at_depth(t, -1) for t in TASKS)  # every task at the last layer
  model = HardSharing(CFG, flat, head_dropout_rate=0.0, shared_features=True)
  params = _params(model, inputs)
  assert model.shared_params == ('encoder',)
  assert set(params['encoder']) == {'embed', 'layers', 'final_norm'}  # a Decoder's tree
  out = model.apply({'params': params}, *inputs)
  hidden, _ = _decoder_states(params, inputs)
  np.testing.assert_allclose(out.tasks['cls'], _head(params, 'cls', _last(hidden)), atol=1e-5)
  # A pair is one row, its two segments in order: its head reads the row's last token too.
  np.testing.assert_allclose(out.tasks['pair'], _head(params, 'pair', _last(hidden)),
                             atol=1e-5)
  np.testing.assert_allclose(out.tasks['tag'], _head(params, 'tag', hidden), atol=1e-5)
  np.testing.assert_allclose(out.shared, _last(hidden), atol=1e-6)  # the adversary's input
  # What sits in the padding does not reach a sentence head.
  ids, segments, mask = inputs
  garbage = jnp.where(mask > 0, ids, 5)
  again = model.apply({'params': params}, garbage, segments, mask)
  for name in ('cls', 'pair'):
    np.testing.assert_array_equal(again.tasks[name], out.tasks[name])


@pytest.mark.integration
def test_hierarchical_tasks_read_the_decoder_at_their_depth():
  inputs = _inputs()
  model = Hierarchical(CFG, TASKS, head_dropout_rate=0.0, task_layers=0)
  params = _params(model, inputs)
  out = model.apply({'params': params}, *inputs)
  hidden, layers = _decoder_states(params, inputs)
  # Depth L reads the final norm's output, a lower depth d that layer's output states.
  np.testing.assert_allclose(out.tasks['cls'], _head(params, 'cls', _last(hidden)), atol=1e-5)
  np.testing.assert_allclose(out.tasks['pair'], _head(params, 'pair', _last(layers[1])),
                             atol=1e-5)
  np.testing.assert_allclose(out.tasks['tag'], _head(params, 'tag', layers[0]), atol=1e-5)
  # ... and depends on no layer above d.
  grads = jax.grad(lambda p: model.apply({'params': p}, *inputs).tasks['pair'].sum())(params)
  stacked = jax.tree.leaves(grads['encoder']['layers'])
  assert all(np.all(np.asarray(g[2:]) == 0) for g in stacked)
  assert any(np.any(np.asarray(g[:2]) != 0) for g in stacked)


@pytest.mark.integration
def test_hierarchical_task_layers_are_decoder_layers_over_the_depth_d_states():
  inputs = _inputs()
  ids, _, mask = inputs
  model = Hierarchical(CFG, TASKS, head_dropout_rate=0.0, task_layers=1)
  params = _params(model, inputs)
  out = model.apply({'params': params}, *inputs)
  hidden, layers = _decoder_states(params, inputs)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  inv_freq, factor = rope.inverse_frequencies(DECODER.head_dim, DECODER.rope_theta, {}, 16)
  layer_inputs = LayerInputs(positions, segment_mask(mask, positions), None,
                             jnp.asarray(inv_freq, jnp.float32), None)
  for name, start in (('cls', hidden), ('pair', layers[1]), ('tag', layers[0])):
    own = params[f'layers_{name}']
    x, _ = DecoderLayer(DECODER, factor).apply({'params': own['layer_0']}, jnp.asarray(start),
                                               None, layer_inputs)
    x = np.asarray(x, np.float64)
    x = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + DECODER.rms_norm_eps)
    x = x * np.asarray(own['norm']['scale'])
    np.testing.assert_allclose(out.tasks[name], _head(params, name, x if name == 'tag'
                                                      else _last(x)), atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize('architecture', ['ple'])
def test_experts_read_the_decoder_s_last_token(architecture):
  """Without tagging tasks the experts read only each row's last real token's state."""
  inputs = _inputs()
  ids, segments, mask = inputs
  flat = tuple(_at_depth(t, -1) for t in TASKS[:2])
  model = architectures.build(architecture, CFG, flat, {}, 0.0)
  params = _params(model, inputs)
  representation = model.apply({'params': params}, *inputs, method='encode_batch')
  hidden, _ = _decoder_states(params, inputs)
  np.testing.assert_allclose(representation['sequence'][:, 0], _last(hidden), atol=1e-6)
  out = model.apply({'params': params}, *inputs)
  again = model.apply({'params': params}, jnp.where(mask > 0, ids, 5), segments, mask)
  jax.tree.map(np.testing.assert_array_equal, again.tasks, out.tasks)


def _decoder_config(smoke_config, **model):
  c = smoke_config
  c.mode, c.tasks = 'multi', ('pos', 'sentiment')
  c.model.backbone = 'decoder'
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 2, 4
  c.model.num_kv_heads, c.model.intermediate_size = 2, 64
  for field, value in model.items():
    c.model[field] = value
  return c


def test_representation_mode_reads_the_shared_features(smoke_config):
  config = _decoder_config(smoke_config)
  config.task_depths = (1, -1)
  tasks = config_lib.validate(config)
  model = config_lib.build_model(config, tasks, 100)
  params = jax.eval_shape(lambda: _params(model, (jnp.zeros((2, 8), jnp.int32),) * 3))
  like = task_gradient_like(model, params, 'representation', 4, 8)
  # pos reads layer 1's token states (its spec's depth), sentiment the last token's.
  assert sorted(x.shape for x in like) == [(4, 8, 32), (4, 32)]
  shared = task_gradient_like(model, params, 'params', 4, 8)
  assert set(shared) == {'encoder'} and 'layers' in shared['encoder']


@pytest.mark.integration
def test_a_step_in_representation_mode_with_the_adversary(smoke_config):
  """PCGrad on the representation (the decoder's shared features) and the discriminator
  reading the last token's state: both move, the decoder too."""
  config = _decoder_config(smoke_config)
  config.adversary.enabled = True
  config.optimizer.warmup_steps = 0  # the first step moves the decoder
  tasks, data, state, model, step = build_step(config, weighting.get('pcgrad'),
                                               mode='representation')
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  new, metrics = jax.jit(step)(state, batch)
  assert np.all(np.isfinite(np.asarray(metrics['task_losses'])))
  assert 'adversary_accuracy' in metrics
  moved = lambda a, b: any(np.any(np.asarray(x) != np.asarray(y))
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(new.params['encoder'], state.params['encoder'])
  assert moved(new.terms[adversarial.NAME].params, state.terms[adversarial.NAME].params)


@pytest.mark.integration
@pytest.mark.parametrize('method', ['uncertainty', 'pcgrad'])
def test_fit_learns_the_suite_with_a_tiny_decoder(smoke_config, tmp_path, method):
  """A loss weighter, and a gradient method taking per-task gradients of the decoder's
  parameters."""
  config = _decoder_config(smoke_config)
  config.num_steps, config.log_every, config.batch_size = 60, 1, 16
  config.optimizer.learning_rate, config.optimizer.schedule = 1e-2, 'constant'
  config.checkpoint.every = 0
  config.logging.eval_every, config.logging.representations = 0, 0
  config.model.head_dropout_rate = 0.0
  config.weighting.name = method
  tasks = config_lib.validate(config_lib.resolved(config))
  data = load_task_data(config.data, tasks)
  fitted = fit(config, tasks, data, str(tmp_path), config_lib.build_weighting(config), method)
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    records = [json.loads(line)['task_losses'] for line in f]
  losses = np.array([[r['pos'], r['sentiment']] for r in records])  # (steps, tasks)
  assert losses.shape == (60, 2) and np.all(np.isfinite(losses))
  # Sentiment from 64 sentences learns slowly and noisily (0.69 to 0.49-0.59 here): each
  # task's loss falls, and their sum to under half (pos: from 2.2 to about 0.07).
  first, last = losses[:5].mean(0), losses[-10:].mean(0)
  assert np.all(last < 0.95 * first) and last.sum() < 0.5 * first.sum(), (first, last)
  assert fitted.metrics['pos']['token_accuracy'] > 0.5  # of 10 tags, on validation rows


@pytest.mark.parametrize('model,message', [
    ({'architecture': 'soft'}, "config.model.architecture: architecture 'soft' does not work "
     r"with the decoder backbone .* use one of \['hard', 'hierarchical', 'mmoe', 'ple'\]"),
    ({'architecture': 'shared_private'},
     "config.model.architecture: architecture 'shared_private' does not work with the "
     'decoder backbone'),
    ({'backbone': 'encoder-decoder'}, "config.model.backbone: 'encoder-decoder' is not one of"),
    ({'num_kv_heads': 3}, 'config.model.num_kv_heads: num_heads 4 is not divisible by '
     'num_kv_heads 3'),
    ({'num_heads': 3, 'num_kv_heads': 0}, 'config.model.num_heads: hidden_size 32 is not divisible by 3; or set '
     'model.head_dim'),
    ({'head_dim': 5, 'num_kv_heads': 0}, 'config.model.head_dim: an attention head is 5 wide'),
    ({'rope_scaling': {'rope_type': 'longrope'}}, 'config.model.rope_scaling: .*longrope'),
    ({'rope_scaling': {'rope_type': 'linear'}}, 'config.model.rope_scaling: .*factor'),
    ({'sliding_window': -1}, 'config.model.sliding_window: must be >= 0'),
    ({'rms_norm_eps': 0.0}, 'config.model.rms_norm_eps: must be > 0'),
    ({'pretrained': '/some/folder'}, "config.model.pretrained: '/some/folder': no such file or "
     'folder'),
])
def test_bad_decoder_configs_are_refused_naming_the_field(smoke_config, model, message):
  config = _decoder_config(smoke_config, **model)
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config_lib.resolved(config))


def test_decoder_fields_are_refused_with_the_encoder(smoke_config):
  smoke_config.model.num_kv_heads = 1
  with pytest.raises(ConfigError, match="config.model.num_kv_heads: a decoder field, set to 1 "
                     "while model.backbone is 'encoder'"):
    config_lib.validate(smoke_config)


def test_building_an_encoder_only_architecture_on_the_decoder_is_refused():
  with pytest.raises(ValueError, match="architecture 'soft' does not work with the decoder"):
    architectures.build('soft', CFG, TASKS, {})
