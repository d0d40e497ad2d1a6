"""Per-task losses under label masks, stacked into one loss vector of shape (N,)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from mtl_jax.tasks import Task


def _per_unit_loss(task: Task, output: jax.Array, label: jax.Array, mask: jax.Array
                   ) -> jax.Array:
  """Loss of every unit (example, or token for tagging), before masking."""
  # Zero the outputs of unlabelled units first, so a NaN there cannot reach the gradient.
  keep = (mask > 0).reshape(mask.shape + (1,) * (output.ndim - mask.ndim))
  output = jnp.where(keep, output, 0.0)
  if task.loss == 'cross_entropy':
    # Masked-out labels may hold any value; clip so the gather stays in range.
    label = jnp.clip(label, 0, task.num_labels - 1)
    return optax.softmax_cross_entropy_with_integer_labels(output.astype(jnp.float32), label)
  if task.loss == 'nll':  # a text task: the output is each token's NLL already
    return output.astype(jnp.float32)
  if task.loss == 'mse':
    if task.target_scale is not None:  # the head predicts the standardised target
      mean, std = task.target_scale
      label = (label - mean) / std
    return jnp.square(output.astype(jnp.float32) - label)
  raise ValueError(f'Task {task.name!r}: unknown loss {task.loss!r}.')


def masked_mean(values: jax.Array, mask: jax.Array, total_count=None
                ) -> tuple[jax.Array, jax.Array]:
  """(mean over mask, count): Σ mask·values / Σ mask. The mean is 0, not NaN, when the mask
  is empty.

  With `total_count`, the count of the whole batch that `values` is a slice of (over
  devices, or over micro-batches), the "mean" is this slice's share of the whole batch's
  mean, Σ_slice / total_count: the shares sum to the mean, and so do their gradients.
  """
  mask = mask.astype(jnp.float32)
  count = mask.sum() if total_count is None else total_count
  # where() keeps a NaN or inf in a masked-out unit out of the sum and its gradient. A mask
  # of weights (a text task's per-example mean) weighs each unit; 0/1 masks weigh none.
  total = jnp.where(mask > 0, values * mask, 0.0).sum()
  return total / jnp.maximum(count, 1.0), count


def label_counts(tasks: Sequence[Task], masks: dict) -> jax.Array:
  """(N,) float32: how many units carry each task's label."""
  return jnp.stack([masks[t.name].astype(jnp.float32).sum() for t in tasks])


def loss_vector(tasks: Sequence[Task], outputs: dict, labels: dict, masks: dict,
                total_counts=None) -> tuple[jax.Array, jax.Array]:
  """Each task's mean loss over the units that carry its label.

  Returns:
    losses: (N,) float32, in the order of `tasks`; 0 for a task with no label in the batch.
      With `total_counts` (N,), this slice's shares of the whole batch's means.
    counts: (N,) float32, how many labelled units each task had (`total_counts` if given).
  """
  counts = [None] * len(tasks) if total_counts is None else list(total_counts)
  pairs = [masked_mean(_per_unit_loss(t, outputs[t.name], labels.get(t.name), masks[t.name]),
                       masks[t.name], c)
           for t, c in zip(tasks, counts)]
  return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
