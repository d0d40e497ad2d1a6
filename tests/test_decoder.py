"""The Llama-layout decoder against an independent numpy forward, and its parts against their
definitions: rotary embeddings as rotations, grouped-query attention as multi-head attention
with repeated KV heads, packed segments that do not see each other, the KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models import rope
from mtl_jax.models.decoder import Decoder, DecoderConfig
from mtl_jax.models.generation import LayerwiseDecoder, split_layers

CFG = DecoderConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=12, intermediate_size=24, rms_norm_eps=1e-5, rope_theta=100.0,
                    max_position_embeddings=32, tie_word_embeddings=False,
                    initializer_range=0.3)


def _params(cfg, seed=0, length=6):
  tokens = jnp.zeros((1, length), jnp.int32)
  positions = jnp.arange(length)[None]
  mask = decoder_lib.segment_mask(jnp.ones((1, length), jnp.int32), positions)
  params = nn.unbox(Decoder(cfg).init(jax.random.key(seed), tokens, positions, mask))['params']
  # Random norm scales and biases, so that a mix-up of them shows.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def _numpy_forward(cfg, params, tokens, positions, mask):
  """A plain numpy decoder, head by head, from the definitions (Touvron et al. 2023; RoPE
  as the rotation of each pair (j, j + d/2) by position · base^(-2j/d))."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  d, groups = cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
  inv_freq = cfg.rope_theta ** (-np.arange(0, d, 2) / d)

  def rms(x, scale):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.rms_norm_eps) * scale

  def rotate(x, pos):  # x (S, d) of one head
    out = np.empty_like(x)
    for s in range(x.shape[0]):
      for j in range(d // 2):
        c, n = np.cos(pos[s] * inv_freq[j]), np.sin(pos[s] * inv_freq[j])
        a, b = x[s, j], x[s, j + d // 2]
        out[s, j], out[s, j + d // 2] = c * a - n * b, n * a + c * b
    return out

  outputs = []
  for row in range(tokens.shape[0]):
    x = p['embed']['embedding'][tokens[row]]
    for i in range(cfg.num_layers):
      layer = jax.tree.map(lambda t: t[i], p['layers'])
      att = layer['attention']
      h = rms(x, layer['attention_norm']['scale'])
      heads = []
      for head in range(cfg.num_heads):
        kv = head // groups
        bias = lambda name, i: att[name]['bias'][i] if cfg.attention_bias else 0.0
        q = h @ att['q']['kernel'][:, head] + bias('q', head)
        k = h @ att['k']['kernel'][:, kv] + bias('k', kv)
        v = h @ att['v']['kernel'][:, kv] + bias('v', kv)
        if cfg.qk_norm:
          q, k = rms(q, att['q_norm']['scale']), rms(k, att['k_norm']['scale'])
        q, k = rotate(q, positions[row]), rotate(k, positions[row])
        logits = np.where(mask[row], q @ k.T / np.sqrt(d), -np.inf)
        with np.errstate(invalid='ignore'):  # a padding query sees no key: NaN, then 0
          weights = np.exp(logits - logits.max(-1, keepdims=True))
          weights = np.nan_to_num(weights / weights.sum(-1, keepdims=True))
        heads.append(weights @ v @ att['o']['kernel'][head])
      x = x + sum(heads)
      h = rms(x, layer['mlp_norm']['scale'])
      gate, up = h @ layer['mlp']['gate']['kernel'], h @ layer['mlp']['up']['kernel']
      x = x + (gate / (1 + np.exp(-gate)) * up) @ layer['mlp']['down']['kernel']
    x = rms(x, p['final_norm']['scale'])
    table = p['embed']['embedding'].T if cfg.tie_word_embeddings else p['lm_head']
    outputs.append(x @ table)
  return np.stack(outputs)


def _logits(cfg, params, tokens, positions, mask, **kwargs):
  model = Decoder(cfg)
  out = model.apply({'params': params}, tokens, positions, mask, **kwargs)
  return model.apply({'params': params}, out.hidden, method=model.logits)


@pytest.mark.parametrize('variant', [
    {},  # Llama: untied, no biases
    {'tie_word_embeddings': True, 'qk_norm': True},  # Qwen3
    {'attention_bias': True, 'num_kv_heads': 1},  # Qwen2, multi-query
    {'sliding_window': 3, 'num_kv_heads': 4},  # Mistral, multi-head
])
def test_logits_equal_a_numpy_forward(variant):
  cfg = DecoderConfig(**{**CFG.__dict__, **variant})
  params = _params(cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (2, 7))
  segments = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2, 0]])  # packed, padded
  positions = np.asarray(decoder_lib.segment_positions(jnp.asarray(segments)))
  np.testing.assert_array_equal(positions[1], [0, 1, 2, 0, 1, 2, 0])
  mask = decoder_lib.segment_mask(jnp.asarray(segments), jnp.asarray(positions),
                                  cfg.sliding_window)
  got = _logits(cfg, params, jnp.asarray(tokens), jnp.asarray(positions), mask)
  # The numpy mask from the definition: causal, same non-padding segment, the window.
  index = np.arange(7)
  want_mask = ((segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
               & (index[None, :, None] >= index[None, None, :]))
  if cfg.sliding_window:
    want_mask &= index[None, :, None] - index[None, None, :] < cfg.sliding_window
  np.testing.assert_array_equal(mask, want_mask)
  want = _numpy_forward(cfg, params, tokens, positions, want_mask)
  valid = segments > 0  # padding queries see no key: their output is not defined
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=2e-4, atol=2e-4)


def test_a_packed_segment_computes_what_it_computes_alone():
  params = _params(CFG)
  rng = np.random.default_rng(1)
  first, second = rng.integers(0, 40, 5), rng.integers(0, 40, 4)
  segments = jnp.asarray([[1] * 5 + [2] * 4])
  positions = decoder_lib.segment_positions(segments)
  packed = _logits(CFG, params, jnp.asarray([np.concatenate([first, second])]), positions,
                   decoder_lib.segment_mask(segments, positions))
  for tokens, part in ((first, slice(0, 5)), (second, slice(5, 9))):
    alone_segments = jnp.ones((1, len(tokens)), jnp.int32)
    alone_positions = jnp.arange(len(tokens))[None]
    alone = _logits(CFG, params, jnp.asarray([tokens]), alone_positions,
                    decoder_lib.segment_mask(alone_segments, alone_positions))
    np.testing.assert_allclose(packed[0, part], alone[0], rtol=1e-5, atol=1e-5)


def test_rotation_is_the_closed_form_and_relative():
  rng = np.random.default_rng(2)
  d, base = 8, 50.0
  inv_freq, _ = rope.inverse_frequencies(d, base, None, 64)
  x = rng.normal(size=(1, 3, 1, d))
  positions = np.array([[0, 5, 11]])
  got = np.asarray(rope.rotate(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(inv_freq)))
  for s, m in enumerate(positions[0]):
    for j in range(d // 2):
      angle = m * base ** (-2 * j / d)
      rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
      np.testing.assert_allclose(got[0, s, 0, [j, j + d // 2]],
                                 rotation @ x[0, s, 0, [j, j + d // 2]], rtol=1e-5, atol=1e-6)
  # <R(m) q, R(n) k> depends only on m - n.
  q, k = rng.normal(size=(1, 1, 1, d)), rng.normal(size=(1, 1, 1, d))
  dot = lambda m, n: float((rope.rotate(jnp.asarray(q), jnp.asarray([[m]]), inv_freq)
                            * rope.rotate(jnp.asarray(k), jnp.asarray([[n]]), inv_freq)).sum())
  assert dot(7, 3) == pytest.approx(dot(24, 20), rel=1e-5)
  assert dot(7, 3) != pytest.approx(dot(7, 4), rel=1e-3)


def test_attention_in_query_blocks_equals_one_pass_and_its_gradient():
  """Rows longer than a block (here 4, with 11 queries: a padded last block) attend block by
  block, each block rematerialised; values and gradients equal the one-pass attention's."""
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(2, 11, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 11, 2, 8)), jnp.float32) for _ in range(2))
  mask = decoder_lib.segment_mask(jnp.asarray([[1] * 6 + [2] * 5, [1] * 9 + [0] * 2]),
                                  jnp.zeros((2, 11), jnp.int32))
  loss = lambda block: lambda q, k, v: jnp.sum(
      decoder_lib.attend(q, k, v, mask, block) * jnp.arange(8.0))
  np.testing.assert_allclose(decoder_lib.attend(q, k, v, mask, 4),
                             decoder_lib.attend(q, k, v, mask, 11), rtol=1e-6, atol=1e-6)
  for blocked, whole in zip(jax.grad(loss(4), (0, 1, 2))(q, k, v),
                            jax.grad(loss(11), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_is_multi_head_with_repeated_kv_heads():
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 4)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((2, 5, 5)) < 0.7) | jnp.eye(5, dtype=bool)
  grouped = decoder_lib.attend(q, k, v, mask)
  repeated = decoder_lib.attend(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), mask)
  np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)
  # and multi-head attention head by head, from its definition
  for head in range(6):
    logits = np.asarray(q[:, :, head] @ np.swapaxes(k[:, :, head // 3], 1, 2)) / 2.0
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(grouped[:, :, head], weights @ np.asarray(v[:, :, head // 3]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('sliding_window', [0, 3])
def test_decoding_with_the_cache_equals_the_whole_forward(sliding_window):
  """Left-padded prompts, a prefill, then one token at a time through generation's
  layer-by-layer decoder and its cache: the same states as the Decoder running each whole
  sequence at once."""
  cfg = DecoderConfig(**{**CFG.__dict__, 'sliding_window': sliding_window})
  params, model = _params(cfg), Decoder(cfg)
  rng = np.random.default_rng(4)
  lengths, prompt, steps = np.array([5, 2]), 5, 4
  tokens = rng.integers(1, 40, (2, prompt + steps))
  prompt_valid = np.arange(prompt)[None] >= prompt - lengths[:, None]  # left padding
  layerwise = LayerwiseDecoder(model)
  cache = layerwise.init_cache(2, prompt + steps)
  key_valid = np.concatenate([prompt_valid, np.zeros((2, steps), bool)], axis=1)
  positions = np.cumsum(key_valid, axis=1) - 1  # from the mask, as generation does
  run = jax.jit(lambda c, t, p, m, s: layerwise(split_layers(params), t, p, m, c, s))
  mask = decoder_lib.cache_mask(jnp.asarray(key_valid), 0, prompt, sliding_window)
  out, cache = run(cache, tokens[:, :prompt], positions[:, :prompt], mask, 0)
  hidden = [out]
  for t in range(prompt, prompt + steps):
    key_valid[:, t] = True
    positions = np.cumsum(key_valid, axis=1) - 1
    mask = decoder_lib.cache_mask(jnp.asarray(key_valid), t, 1, sliding_window)
    out, cache = run(cache, tokens[:, t:t + 1], positions[:, t:t + 1], mask, t)
    hidden.append(out)
  cached = np.concatenate(hidden, axis=1)
  for row, length in enumerate(lengths):
    real = tokens[row, prompt - length:]
    positions = jnp.arange(len(real))[None]
    whole = model.apply({'params': params}, jnp.asarray(real[None]), positions,
                        decoder_lib.segment_mask(jnp.ones_like(positions), positions,
                                                 sliding_window)).hidden
    np.testing.assert_allclose(cached[row, prompt - length:], whole[0], rtol=2e-5, atol=2e-5)


@pytest.mark.integration
def test_bfloat16_compute_keeps_float32_parameters_and_stays_close():
  params = _params(CFG)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 40, (2, 8)))
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
  mask = decoder_lib.segment_mask(jnp.ones((2, 8), jnp.int32), positions)
  bf16 = DecoderConfig(**{**CFG.__dict__, 'dtype': 'bfloat16'})
  full, low = (_logits(c, params, tokens, positions, mask) for c in (CFG, bf16))
  assert low.dtype == jnp.float32  # logits in float32
  assert nn.unbox(Decoder(bf16).init(jax.random.key(0), tokens, positions, mask)
                  )['params']['layers']['mlp']['up']['kernel'].dtype == jnp.float32
  scale = float(jnp.abs(full).max())
  assert float(jnp.abs(low - full).max()) < 0.05 * scale
  assert float(jnp.abs(low - full).max()) > 0  # it did compute in bfloat16


@pytest.mark.integration
def test_remat_gives_the_same_loss_and_gradients():
  params = _params(CFG)
  tokens = jnp.asarray(np.random.default_rng(6).integers(0, 40, (2, 8)))
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
  mask = decoder_lib.segment_mask(jnp.ones((2, 8), jnp.int32), positions)

  def loss(cfg):
    return jax.value_and_grad(lambda p: jnp.mean(_logits(cfg, p, tokens, positions, mask) ** 2)
                              )(params)

  plain = loss(CFG)
  for policy in ('full', 'dots'):
    value, grads = loss(DecoderConfig(**{**CFG.__dict__, 'remat': policy}))
    np.testing.assert_allclose(value, plain[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads, plain[1])


def test_parameters_carry_logical_axes_with_a_layer_axis():
  tokens = jnp.zeros((1, 4), jnp.int32)
  positions = jnp.arange(4)[None]
  boxed = Decoder(CFG).init(jax.random.key(0), tokens, positions,
                            decoder_lib.segment_mask(jnp.ones_like(tokens), positions))['params']
  names = {'/'.join(k.key for k in path): leaf.names for path, leaf in
           jax.tree_util.tree_flatten_with_path(
               boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]}
  assert names['layers/attention/k/kernel'] == ('layers', 'embed', 'kv_heads', 'head_dim')
  assert names['layers/attention/o/kernel'] == ('layers', 'heads', 'head_dim', 'embed')
  assert names['layers/mlp/down/kernel'] == ('layers', 'mlp', 'embed')
  assert names['embed/embedding'] == ('vocab', 'embed') and names['lm_head'] == ('embed', 'vocab')


@pytest.mark.parametrize('fields,message', [
    ({'num_heads': 4, 'num_kv_heads': 3}, 'num_heads 4 is not divisible by num_kv_heads 3'),
    ({'rope_scaling': (('rope_type', 'longrope'),)}, "rope type 'longrope' is not supported"),
    ({'rope_scaling': (('rope_type', 'linear'),)}, "rope type 'linear' needs rope_scaling"),
    ({'head_dim': 7}, 'head_dim 7 is odd'),
    ({'dtype': 'float16'}, "dtype 'float16' is not one of"),
])
def test_bad_configs_are_refused_naming_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    DecoderConfig(**{**CFG.__dict__, **fields})


class _TaskBias(nn.Module):
  """A test adapter: adds a learned bias to its projection's output on task 1's tokens."""
  projection: str

  @nn.compact
  def __call__(self, x, y, task_ids):
    bias = self.param('bias', nn.initializers.zeros, y.shape[2:])
    on = (task_ids == 1).reshape(task_ids.shape + (1,) * (y.ndim - 2))
    return y + on * bias


def test_the_adapter_hook_wraps_every_projection_per_token_task():
  tokens = jnp.asarray(np.random.default_rng(7).integers(0, 40, (2, 5)))
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
  mask = decoder_lib.segment_mask(jnp.ones((2, 5), jnp.int32), positions)
  task_ids = jnp.asarray([[0] * 5, [1] * 5])
  model = Decoder(CFG, adapter=_TaskBias)
  params = nn.unbox(model.init(jax.random.key(0), tokens, positions, mask, task_ids))['params']
  paths = [tuple(k.key for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  assert {p[-3] for p in paths if 'adapter' in p} == set(decoder_lib.PROJECTIONS)

  def drop(node):  # the base model's parameters: the same tree without the adapters
    return {k: drop(v) for k, v in node.items() if k != 'adapter'} if isinstance(node, dict) \
        else node

  run = lambda p: model.apply({'params': p}, tokens, positions, mask, task_ids).hidden
  base = Decoder(CFG).apply({'params': drop(params)}, tokens, positions, mask).hidden
  np.testing.assert_array_equal(run(params), base)  # zero adapters: the base model
  down = params['layers']['mlp']['down']['adapter']
  down['bias'] = jnp.ones_like(down['bias'])
  moved = run(params)
  np.testing.assert_array_equal(moved[0], base[0])  # task 0's row: untouched
  assert float(jnp.abs(moved[1] - base[1]).max()) > 1e-3  # task 1's row: changed
