"""The causal language-model loss: each position predicts the next token.

`next_token_loss` is the mean negative log-likelihood over the target tokens a mask marks
(token t + 1 is a target of position t when target_mask[t + 1]); with `masked_mean`, a row
or batch without targets contributes 0, not NaN. This form materialises the (B, S, V)
logits.

Packed rows (data/packing.py) carry each position's own target and task: `chunked_token_nll`
computes the NLL where a target is, chunk by chunk, never holding the (B, S, V) logits, and
`task_token_losses` / `task_example_losses` reduce it to the loss vector (N,) that the
weighting methods take: a task's mean over its target tokens, or over its examples.
"""

from collections.abc import Callable

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


def chunked_token_nll(hidden: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                      logits_fn: Callable[[jax.Array], jax.Array], chunk: int) -> jax.Array:
  """(B, S) NLL of `targets` under logits_fn(hidden) where `loss_mask` marks a target, 0
  elsewhere, without ever holding the (B, S, V) logits.

  The B·S positions are ordered targets first and cut into chunks of `chunk`; a chunk
  computes its (chunk, V) logits in float32, and one with no target skips the projection
  (lax.cond), so the cost follows the targets, not the padding and prompts. Each chunk is
  rematerialised: the backward pass recomputes its logits instead of keeping them.
  """
  batch, length, width = hidden.shape
  n = batch * length
  mask = loss_mask.reshape(n) > 0
  order = jnp.argsort(~mask, stable=True)
  pad = (-n) % chunk
  cut = lambda x: jnp.pad(x[order], [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(
      (-1, chunk) + x.shape[1:])
  chunks = (cut(hidden.reshape(n, width)), cut(targets.reshape(n)), cut(mask))

  @jax.checkpoint
  def one(args):
    h, t, m = args

    def nll():
      logits = logits_fn(h).astype(jnp.float32)
      picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
      return jnp.where(m, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)

    return jax.lax.cond(jnp.any(m), nll, lambda: jnp.zeros(m.shape, jnp.float32))

  nll = jax.lax.map(one, chunks).reshape(-1)[:n]
  return jnp.zeros(n, jnp.float32).at[order].set(nll).reshape(batch, length)


def task_token_losses(nll: jax.Array, loss_mask: jax.Array, task_ids: jax.Array,
                      num_tasks: int) -> tuple[jax.Array, jax.Array]:
  """(losses (N,), target counts (N,)): each task's mean NLL over its own target tokens in
  the batch; 0 for a task with none."""
  member = (task_ids[..., None] == jnp.arange(num_tasks)) & (loss_mask[..., None] > 0)
  counts = member.sum(axis=(0, 1)).astype(jnp.float32)
  sums = jnp.where(member, nll[..., None], 0.0).sum(axis=(0, 1))
  return sums / jnp.maximum(counts, 1.0), counts


def task_example_losses(nll: jax.Array, loss_mask: jax.Array, task_ids: jax.Array,
                        example_ids: jax.Array, num_tasks: int) -> tuple[jax.Array, jax.Array]:
  """(losses (N,), example counts (N,)): each task's mean over its examples of each
  example's mean NLL over its target tokens (examples without targets left out); 0 for a
  task with none. `example_ids` (-1 on padding) number the batch's examples."""
  slots = nll.size  # an upper bound on the examples in the batch
  ids = jnp.where(example_ids >= 0, example_ids, slots).reshape(-1)
  targets = (loss_mask > 0).reshape(-1)
  sums = jax.ops.segment_sum(jnp.where(targets, nll.reshape(-1), 0.0), ids, slots + 1)[:slots]
  counts = jax.ops.segment_sum(targets.astype(jnp.float32), ids, slots + 1)[:slots]
  task = jax.ops.segment_max(task_ids.reshape(-1), ids, slots + 1)[:slots]
  per_example = sums / jnp.maximum(counts, 1.0)
  member = (task[:, None] == jnp.arange(num_tasks)) & (counts[:, None] > 0)
  examples = member.sum(axis=0).astype(jnp.float32)
  return (jnp.where(member, per_example[:, None], 0.0).sum(axis=0) / jnp.maximum(examples, 1.0),
          examples)
