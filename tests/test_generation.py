"""Generation against the truth it must reproduce: greedy decoding with the cache equals
taking the argmax of a whole forward pass again and again; samplers draw from the
distributions their definitions give."""

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models.decoder import Decoder, DecoderConfig
from mtl_jax.models.generation import Generator, Sampling, sample

CFG = DecoderConfig(vocab_size=30, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=32, max_position_embeddings=48, initializer_range=0.5)
PROMPTS = [[3, 7, 1, 9, 4, 4, 2, 8, 5], [6, 2, 11]]


@pytest.fixture(scope='module')
def params():
  tokens = jnp.zeros((1, 4), jnp.int32)
  positions = jnp.arange(4)[None]
  return nn.unbox(Decoder(CFG).init(jax.random.key(0), tokens, positions,
                                    decoder_lib.segment_mask(tokens + 1, positions)))['params']


@pytest.fixture(scope='module')
def generator(params):
  return Generator(Decoder(CFG), params, stop_ids=(), pad_id=0)


def _greedy_without_cache(params, prompt, steps):
  """Greedy tokens by the Decoder's whole forward at each step (no cache)."""
  model, tokens = Decoder(CFG), list(prompt)
  for _ in range(steps):
    positions = jnp.arange(len(tokens))[None]
    hidden = model.apply({'params': params}, jnp.asarray([tokens]), positions,
                         decoder_lib.segment_mask(jnp.ones_like(positions), positions)).hidden
    logits = model.apply({'params': params}, hidden[:, -1], method=Decoder.logits)
    tokens.append(int(jnp.argmax(logits[0])))
  return tokens[len(prompt):]


def test_greedy_batch_equals_argmax_of_whole_forwards(generator, params):
  want = [_greedy_without_cache(params, p, 6) for p in PROMPTS]
  assert generator.generate(PROMPTS, 6) == want
  assert len(set(map(tuple, want))) > 1  # the rows differ: the check is not vacuous


def test_a_stop_id_ends_its_row_and_keeps_the_others_going(generator, params):
  full = [_greedy_without_cache(params, p, 6) for p in PROMPTS]
  stop = full[0][2]
  assert stop not in full[1] and stop not in full[0][:2]
  stopping = Generator(generator.model, params, stop_ids=(stop,), pad_id=0)
  assert stopping.generate(PROMPTS, 6) == [full[0][:3], full[1]]


def test_a_stop_callback_ends_a_row_and_streaming_sees_each_token(generator, params):
  full = [_greedy_without_cache(params, p, 5) for p in PROMPTS]
  seen = []
  got = generator.generate(PROMPTS, 5, stop=lambda row, tokens: row == 1 and len(tokens) == 2,
                           on_token=lambda tokens, active: seen.append(
                               [int(t) for t, a in zip(tokens, active) if a]))
  assert got == [full[0], full[1][:2]]
  assert [s[0] for s in seen] == full[0] and [s[1] for s in seen[:2]] == full[1][:2]


def test_prompts_in_one_bucket_compile_once(generator):
  before = generator._prefill._cache_size()
  generator.generate([[1, 2, 3]], 4)
  generator.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], 4)
  assert generator._prefill._cache_size() == before + 1


def test_sampling_is_deterministic_in_its_key(generator):
  hot = Sampling(temperature=1.5)
  one = generator.generate(PROMPTS, 8, hot, jax.random.key(1))
  assert one == generator.generate(PROMPTS, 8, hot, jax.random.key(1))
  assert one != generator.generate(PROMPTS, 8, hot, jax.random.key(2))


def _frequencies(logits, sampling, draws=20000):
  keys = jax.random.split(jax.random.key(0), draws)
  tokens = jax.vmap(lambda k: sample(jnp.asarray([logits], jnp.float32), k, sampling))(keys)
  return np.bincount(np.asarray(tokens).ravel(), minlength=len(logits)) / draws


def test_samplers_draw_from_their_definitions():
  probs = np.array([0.5, 0.3, 0.1, 0.07, 0.03])
  logits = np.log(probs) + 1.0  # any shift
  np.testing.assert_allclose(_frequencies(logits, Sampling(temperature=1.0)), probs, atol=0.01)
  tempered = probs ** 2 / (probs ** 2).sum()  # temperature 0.5 squares the probabilities
  np.testing.assert_allclose(_frequencies(logits, Sampling(temperature=0.5)), tempered,
                             atol=0.01)
  top2 = np.array([0.5, 0.3, 0, 0, 0]) / 0.8
  np.testing.assert_allclose(_frequencies(logits, Sampling(1.0, top_k=2)), top2, atol=0.01)
  # The nucleus for p = 0.6 is {0, 1}: 0.5 alone falls short, 0.5 + 0.3 reaches it.
  np.testing.assert_allclose(_frequencies(logits, Sampling(1.0, top_p=0.6)), top2, atol=0.01)
  np.testing.assert_allclose(_frequencies(logits, Sampling(1.0, top_p=0.85)),
                             np.array([0.5, 0.3, 0.1, 0, 0]) / 0.9, atol=0.01)
  assert int(sample(jnp.asarray([logits]), jax.random.key(0), Sampling())[0]) == 0


@pytest.mark.parametrize('call,message', [
    (lambda g: Sampling(top_p=0.0), r'top_p 0.0 is outside \(0, 1\]'),
    (lambda g: Sampling(top_p=1.5), r'top_p 1.5 is outside \(0, 1\]'),
    (lambda g: g.generate(PROMPTS, 0), 'max_new_tokens 0 must be positive'),
    (lambda g: g.generate([list(range(1, 30)) * 2], 4), 'longer than the cache'),
])
def test_bad_requests_are_refused(generator, call, message):
  with pytest.raises(ValueError, match=message):
    call(generator)


def _generate_command(*args):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return lambda stdin=None: subprocess.run(
      [sys.executable, '-m', 'mtl_jax.generate', *args], cwd=root, input=stdin,
      capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_line_chats_with_smollm2_over_two_turns():
  result = _generate_command('--chat', '--max_new_tokens=40')(
      'What is the capital of France?\nAnd what is its largest city?\n\n')
  assert result.returncode == 0, result.stderr[-2000:]
  first, second = result.stdout.strip().splitlines()
  assert first == 'The capital of France is Paris.'
  assert 'Paris' in second  # the second turn saw the first


@pytest.mark.slow
@pytest.mark.parametrize('args,message', [
    (('--prompt=x', '--top_p=0'), r'top_p 0.0 is outside \(0, 1\]'),
    (('--prompt=x', '--max_new_tokens=0'), 'max_new_tokens 0 must be positive'),
    (('--prompt=x', '--model=/no/such/model'), '/no/such/model: no such file or folder'),
])
def test_the_command_line_refuses_bad_input_in_one_line(args, message):
  result = _generate_command(*args)()
  assert result.returncode == 2
  assert re.search(message, result.stderr.strip().splitlines()[-1])
