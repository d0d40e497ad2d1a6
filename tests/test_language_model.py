"""The causal language-model loss against its definition, and fine-tuning SmolLM2 on a few
chat examples lowering it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

from mtl_jax.data import llm_tokenizer
from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models import llama_checkpoint
from mtl_jax.models.decoder import Decoder
from mtl_jax.objectives.language_model import decoder_loss, next_token_loss


def test_next_token_loss_is_the_mean_nll_of_the_marked_targets():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7))
  tokens = rng.integers(0, 7, (2, 5))
  target = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
  nll = [logsumexp(logits[b, t - 1]) - logits[b, t - 1, tokens[b, t]]
         for b in range(2) for t in range(1, 5) if target[b, t]]
  loss, count = next_token_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(target))
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
  assert count == 5
  empty, _ = next_token_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.zeros((2, 5)))
  assert empty == 0.0


@pytest.mark.integration
def test_fine_tuning_smollm2_lowers_its_loss_on_a_few_chats():
  path = llama_checkpoint.smollm2_gguf()
  reader = llama_checkpoint.open_gguf(path)
  cfg, params = llama_checkpoint.read_gguf(reader)
  tokenizer = llm_tokenizer.from_gguf(path, reader=reader)
  chats = [('Who wrote the zorblax manual?', 'Quentin Vale wrote it in 1987.'),
           ('What colour is a zorblax?', 'A zorblax is teal with orange stripes.'),
           ('Where do zorblaxes live?', 'They live in the caves of Mount Ferrow.')]
  rows, targets = [], []
  for question, answer in chats:
    prompt = tokenizer.encode_chat([{'role': 'user', 'content': question}], True)
    full = tokenizer.encode_chat([{'role': 'user', 'content': question},
                                  {'role': 'assistant', 'content': answer}], False)
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
  for _ in range(4):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  losses.append(float(jax.jit(loss_fn)(params)))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0], losses
