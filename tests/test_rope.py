"""Rotary frequencies of every rope type against the ones transformers computes
(tests/data/rope_reference.json, written by experiments/reference/llama_parity_reference.py),
and the decoder's use of the dynamic ones."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models import rope

with open(os.path.join(os.path.dirname(__file__), 'data', 'rope_reference.json')) as f:
  REFERENCE = json.load(f)
CASES = {case['name']: case for case in REFERENCE['cases']}


@pytest.mark.parametrize('name', sorted(CASES))
def test_frequencies_equal_transformers(name):
  case = CASES[name]
  scaling = {k: v for k, v in case['rope_scaling'].items() if k != 'rope_theta'}
  inv_freq, attention_factor = rope.inverse_frequencies(
      case['head_dim'], case['rope_theta'], scaling, case['max_position_embeddings'])
  if case['rope_type'] == 'dynamic' and case['seq_len'] is not None:
    inv_freq = np.asarray(rope.dynamic_frequencies(
        case['head_dim'], case['rope_theta'], scaling['factor'],
        case['max_position_embeddings'], case['seq_len']))
  # transformers computes in float32: agreement to its rounding
  np.testing.assert_allclose(inv_freq, case['inv_freq'], rtol=3e-6)
  assert attention_factor == pytest.approx(case['attention_factor'], rel=1e-6)


def test_the_cases_cover_every_rope_type():
  assert {rope.rope_type(c['rope_scaling']) for c in CASES.values()} == set(rope.ROPE_TYPES)


def test_dynamic_frequencies_follow_the_longest_position_in_the_decoder():
  """The decoder scales a dynamic rope by max(position) + 1, as transformers does."""
  from mtl_jax.models.decoder import DecoderConfig, frequencies
  cfg = DecoderConfig(vocab_size=10, hidden_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=2, intermediate_size=16, max_position_embeddings=8,
                      rope_scaling=(('factor', 2.0), ('rope_type', 'dynamic')))
  within, _ = frequencies(cfg, jnp.arange(8)[None])
  beyond, _ = frequencies(cfg, jnp.arange(24)[None])
  np.testing.assert_allclose(within, rope.inverse_frequencies(8, 1e4, None, 8)[0], rtol=1e-6)
  np.testing.assert_allclose(beyond, rope.dynamic_frequencies(8, 1e4, 2.0, 8, 24), rtol=1e-6)
  assert float(beyond[-1]) < float(within[-1])
