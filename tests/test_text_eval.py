"""Evaluation of text-to-text tasks (mtl_jax/evaluation/text_eval.py) against a plain
computation: each example's completion log-likelihood from one whole forward of it alone."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from scipy.special import log_softmax
from test_llm_tokenizer import write_gguf

from mtl_jax.data import llm_tokenizer
from mtl_jax.data.instructions import tokenize
from mtl_jax.data.packing import TextExample
from mtl_jax.data.text_sources import Conversation
from mtl_jax.evaluation import text_eval
from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models.decoder import Decoder, DecoderConfig


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tokenizer = llm_tokenizer.from_gguf(write_gguf(tmp_path_factory.mktemp('t') / 'tiny.gguf'))
  cfg = DecoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2,
                      num_heads=4, num_kv_heads=2, intermediate_size=48,
                      max_position_embeddings=128, initializer_range=0.5)
  z = jnp.zeros((1, 4), jnp.int32)
  params = nn.unbox(Decoder(cfg).init(jax.random.key(1), z, z,
                                      decoder_lib.segment_mask(z + 1, z)))['params']
  return Decoder(cfg), params, tokenizer


def _alone(model, params, example: TextExample) -> float:
  """The completion's NLL from a whole forward of the example alone (no packing, no chunks)."""
  tokens = list(example.prompt) + list(example.completion)
  x = jnp.asarray([tokens])
  positions = jnp.arange(len(tokens))[None]
  hidden = model.apply({'params': params}, x, positions,
                       decoder_lib.segment_mask(jnp.ones_like(x), positions)).hidden
  logp = log_softmax(np.asarray(model.apply({'params': params}, hidden,
                                            method=Decoder.logits)[0], np.float64), -1)
  start = len(example.prompt)
  return -sum(logp[t - 1, tokens[t]] for t in range(start, len(tokens)))


def test_completion_scores_equal_each_example_alone(setup):
  model, params, _ = setup
  rng = np.random.default_rng(0)
  examples = [TextExample(0, rng.integers(3, 200, rng.integers(1, 9)).tolist(),
                          rng.integers(3, 200, rng.integers(1, 7)).tolist()) for _ in range(7)]
  # Rows of 24: several batches, until every example is placed.
  scored = text_eval.score_completions(model, params, examples, rows=2, length=24, chunk=8)
  np.testing.assert_allclose(scored.nats, [_alone(model, params, e) for e in examples],
                             rtol=2e-5)
  np.testing.assert_array_equal(scored.tokens, [len(e.completion) for e in examples])
  with pytest.raises(ValueError, match=r'evaluation example\(s\) \[0\] do not fit a row of 4'):
    text_eval.score_completions(model, params, examples[:1], 1, 4)


def test_loss_bits_per_byte_and_rank_classification(setup):
  model, params, tokenizer = setup
  chats = [Conversation('t', (('user', q), ('assistant', a)), f't:{i}') for i, (q, a) in
           enumerate([('hello', 'world'), ('he', 'hell o'), ('wor ld', 'ö hello')])]
  examples = [tokenize(tokenizer, c, {'t': 0}) for c in chats]
  nats = np.array([_alone(model, params, e) for e in examples])
  replies = [c.messages[-1][1] for c in chats]
  got = text_eval.loss_and_bits_per_byte(model, params, tokenizer, chats, rows=2, length=64)
  assert got['loss'] == pytest.approx(nats.sum() / sum(len(e.completion) for e in examples),
                                      rel=2e-5)
  assert got['bits_per_byte'] == pytest.approx(
      nats.sum() / (np.log(2) * sum(len(r.encode('utf-8')) for r in replies)), rel=2e-5)
  prompts = [(('user', 'hello'),), (('user', 'world'),), (('system', 'be'), ('user', 'he'))]
  options = [['world', 'he', 'hello world'], ['wo', 'rld', 'ö'], ['hell', 'o', 'll']]
  labels = [2, 0, 1]
  loglik = np.array([[-_alone(model, params, tokenize(
      tokenizer, Conversation('', p + (('assistant', o),), 'x'), {'': 0})) for o in opts]
      for p, opts in zip(prompts, options)])
  lengths = np.array([[len(o.encode('utf-8')) for o in opts] for opts in options])
  scores = text_eval.rank_classification(model, params, tokenizer, prompts, options, labels,
                                         rows=3, length=64)
  assert scores['acc'] == pytest.approx(sklearn.metrics.accuracy_score(labels,
                                                                       loglik.argmax(1)))
  assert scores['acc_norm'] == pytest.approx(sklearn.metrics.accuracy_score(
      labels, (loglik / lengths).argmax(1)))


def test_generated_answers_are_the_greedy_replies(setup):
  model, params, tokenizer = setup
  prompts = [(('user', 'hello'),), (('user', 'he wo'),)]
  answers = text_eval.generated_answers(model, params, tokenizer, prompts, max_new_tokens=4,
                                        batch=1)
  for messages, answer in zip(prompts, answers):
    ids = tokenizer.encode_chat([{'role': r, 'content': c} for r, c in messages], True)
    tokens = []
    for _ in range(4):  # greedy, one whole forward per token
      x = jnp.asarray([ids + tokens])
      positions = jnp.arange(x.shape[1])[None]
      hidden = model.apply({'params': params}, x, positions,
                           decoder_lib.segment_mask(jnp.ones_like(x), positions)).hidden
      tokens.append(int(jnp.argmax(model.apply({'params': params}, hidden[0, -1],
                                               method=Decoder.logits))))
      if tokens[-1] in tokenizer.stop_ids:
        break
    assert answer == tokenizer.decode(tokens, skip_special_tokens=True).strip()
  assert text_eval.generative_scores(answers, answers) == {'answer_exact_match': 1.0,
                                                           'answer_f1': 1.0}
