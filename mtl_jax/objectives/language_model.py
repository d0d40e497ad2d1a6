"""The causal language-model loss: each position predicts the next token.

`next_token_loss` is the mean negative log-likelihood over the target tokens a mask marks
(token t + 1 is a target of position t when target_mask[t + 1]); with `masked_mean`, a row
or batch without targets contributes 0, not NaN. The instruction-tuning issue computes it
in chunks over the vocabulary; this form materialises the (B, S, V) logits.
"""

import jax
import jax.numpy as jnp
import optax

from mtl_jax.objectives.losses import masked_mean


def next_token_loss(logits: jax.Array, tokens: jax.Array, target_mask: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """(mean NLL, target count) of logits (B, S, V) for tokens (B, S): position t predicts
  tokens[t + 1], counted where target_mask[t + 1] > 0."""
  nll = optax.softmax_cross_entropy_with_integer_labels(
      logits[:, :-1].astype(jnp.float32), tokens[:, 1:])
  return masked_mean(nll, target_mask[:, 1:])


def decoder_loss(model, params, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
                 target_mask: jax.Array) -> jax.Array:
  """next_token_loss of a models.decoder.Decoder over its attention `mask`."""
  out = model.apply({'params': params}, tokens, positions, mask)
  logits = model.apply({'params': params}, out.hidden, method=type(model).logits)
  return next_token_loss(logits, tokens, target_mask)[0]
