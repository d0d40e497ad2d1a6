"""Parity with transformers: its own loading of the same checkpoints gives the same hidden
states, logits and greedy continuations (references stored by
experiments/reference/llama_parity_reference.py; the project never imports torch). And
SmolLM2, read once for the module, fine-tunes."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax.data import llm_tokenizer
from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models import llama_checkpoint
from mtl_jax.models.decoder import Decoder
from mtl_jax.models.generation import Generator
from mtl_jax.objectives.language_model import decoder_loss

DATA = os.path.join(os.path.dirname(__file__), 'data')


def _forward(cfg, params, tokens, mask, positions):
  model = Decoder(cfg, keep_states=True)
  out = model.apply({'params': params}, jnp.asarray(tokens), jnp.asarray(positions),
                    decoder_lib.segment_mask(jnp.asarray(mask), jnp.asarray(positions),
                                             cfg.sliding_window))
  return out, model.apply({'params': params}, out.hidden, method=Decoder.logits)


@pytest.mark.parametrize('name', ['tiny_llama', 'tiny_qwen2', 'tiny_qwen3'])
def test_tiny_models_equal_transformers(name):
  """Right- and left-padded rows; every layer's states, the logits, greedy decoding."""
  cfg, params = llama_checkpoint.read_hf(os.path.join(DATA, name))
  ref = np.load(os.path.join(DATA, f'{name}_reference.npz'))
  mask = ref['attention_mask']
  out, logits = _forward(cfg, params, ref['input_ids'], mask, ref['position_ids'])
  real = mask > 0  # transformers' outputs at padding are not defined the same way
  np.testing.assert_allclose(np.asarray(logits)[real], ref['logits'][real], rtol=1e-4,
                             atol=1e-5)
  for layer in range(cfg.num_layers - 1):  # transformers' last state is after the norm
    np.testing.assert_allclose(np.asarray(out.layer_states[layer])[real],
                               ref['hidden_states'][layer + 1][real], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.hidden)[real], ref['hidden_states'][-1][real],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(ref['greedy_cache'], ref['greedy_nocache'])
  generated = Generator(Decoder(cfg), params, stop_ids=(), pad_id=0).generate(
      [list(ref['prompt'][0])], len(ref['greedy_cache']))
  assert generated[0] == list(ref['greedy_cache'])


@pytest.fixture(scope='module')
def smollm2():
  path = llama_checkpoint.smollm2_gguf()
  reader = llama_checkpoint.open_gguf(path)
  cfg, params = llama_checkpoint.read_gguf(reader)
  return cfg, params, llm_tokenizer.from_gguf(path, reader=reader)


@pytest.mark.integration
def test_smollm2_from_gguf_equals_transformers_and_answers_paris(smollm2, xla_optimised):
  cfg, params, tokenizer = smollm2
  ref = np.load(os.path.join(DATA, 'smollm2_reference.npz'))
  with open(os.path.join(DATA, 'smollm2_reference.json')) as f:
    info = json.load(f)
  ids = tokenizer.encode(tokenizer.apply_chat_template(info['chat_messages'], True),
                         add_special_tokens=False)
  assert ids == list(ref['chat_ids'])
  positions = np.arange(len(ids))[None]
  out, logits = _forward(cfg, params, np.asarray([ids]), np.ones_like(positions), positions)
  np.testing.assert_allclose(out.hidden[0], ref['final_hidden'], rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(logits[0, -4:], ref['logits_last4'], rtol=1e-3, atol=2e-3)
  np.testing.assert_array_equal(np.argmax(logits[0], -1), ref['argmax'])
  generator = Generator(Decoder(cfg), params, stop_ids=(), pad_id=tokenizer.pad_id)
  reply = generator.generate([ids], len(ref['greedy_cache']))[0]
  assert reply == list(ref['greedy_cache']) == list(ref['greedy_nocache'])
  assert tokenizer.decode(reply[:reply.index(tokenizer.eos_id)]) == (
      'The capital of France is Paris.')


@pytest.mark.integration
def test_smollm2_config(smollm2):
  cfg, params, _ = smollm2
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
          cfg.intermediate_size, cfg.vocab_size) == (30, 576, 9, 3, 1536, 49152)
  assert cfg.tie_word_embeddings and 'lm_head' not in params
  assert (cfg.rope_theta, cfg.rope_scaling, cfg.head_dim, cfg.rms_norm_eps,
          cfg.max_position_embeddings) == (100000.0, (), 64, 1e-5, 8192)
  assert not (cfg.attention_bias or cfg.qk_norm or cfg.sliding_window)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape,
                                                        llama_checkpoint.expected_shapes(cfg))


@pytest.mark.integration
def test_smollm2_weights_equal_transformers_gguf_loader(smollm2):
  """Dequantised and unpermuted as transformers' GGUF loader holds them (torch layout):
  slices across the rotary halves and heads of Q and K, V, o, down, norms, embeddings."""
  cfg, params, _ = smollm2
  ref = np.load(os.path.join(DATA, 'smollm2_reference.npz'))
  ours = llama_checkpoint.hf_tensors(cfg, params)
  keys = [k for k in ref.files if k.startswith('weight:')]
  assert len(keys) >= 8
  for key in keys:
    name, index = re.fullmatch(r'weight:(.+)\[(.+)\]', key).groups()
    slices = tuple(slice(*map(int, part.split(':'))) for part in index.split(','))
    np.testing.assert_array_equal(ours[name][slices], ref[key], err_msg=key)
  # The same, read from our kernels directly: q_proj rows h·64 + r are kernel[:, h, r].
  q = ref['weight:model.layers.0.self_attn.q_proj.weight[28:36,0:8]']
  np.testing.assert_array_equal(params['layers']['attention']['q']['kernel'][0, :8, 0, 28:36].T,
                                q)
  k = ref['weight:model.layers.0.self_attn.k_proj.weight[64:68,0:8]']
  np.testing.assert_array_equal(params['layers']['attention']['k']['kernel'][0, :8, 1, 0:4].T,
                                k)


@pytest.mark.integration
def test_fine_tuning_smollm2_lowers_its_loss_on_a_few_chats(smollm2, xla_optimised):
  cfg, params, tokenizer = smollm2
  chats = [('Who wrote the zorblax manual?', 'Quentin Vale wrote it in 1987.'),
           ('What colour is a zorblax?', 'A zorblax is teal with orange stripes.'),
           ('Where do zorblaxes live?', 'They live in the caves of Mount Ferrow.')]
  rows, targets = [], []
  for question, answer in chats:
    chat = [{'role': 'system', 'content': 'Answer.'}, {'role': 'user', 'content': question}]
    prompt = tokenizer.encode_chat(chat, True)
    full = tokenizer.encode_chat(chat + [{'role': 'assistant', 'content': answer}], False)
    assert full[:len(prompt)] == prompt
    rows.append(full)
    targets.append([0] * len(prompt) + [1] * (len(full) - len(prompt)))  # the reply only
  length = max(map(len, rows))
  tokens, attention = llm_tokenizer.pad_right(rows, length, tokenizer.pad_id)
  target_mask, _ = llm_tokenizer.pad_right(targets, length, 0)
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  mask = decoder_lib.segment_mask(jnp.asarray(attention), positions)
  model = Decoder(cfg)
  optimizer = optax.adamw(1e-4)
  loss_fn = lambda p: decoder_loss(model, p, jnp.asarray(tokens), positions, mask,
                                   jnp.asarray(target_mask))

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = jax.tree.map(jnp.asarray, params)
  opt_state = optimizer.init(params)
  losses = []
  for _ in range(3):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  losses.append(float(jax.jit(loss_fn)(params)))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0], losses
