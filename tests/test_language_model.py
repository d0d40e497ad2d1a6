"""The causal language-model loss against its definition (fine-tuning SmolLM2 with it:
tests/test_llama_parity.py)."""

import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from mtl_jax.objectives.language_model import next_token_loss


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
