"""The joint objective: sum_i lambda_i L_i - lambda_adv L_adv.

Weights come in as data, formed each step by the run's weighting method (mtl_jax.weighting);
this module does not know which one.
"""

import jax
import jax.numpy as jnp


def effective_weights(weights: jax.Array, counts: jax.Array) -> jax.Array:
  """A task with no labelled unit in the batch gets weight 0."""
  return jnp.where(counts > 0, weights, 0.0)


def joint_loss(losses: jax.Array, weights: jax.Array, adversarial_loss=0.0,
               adversarial_weight=0.0) -> jax.Array:
  return jnp.dot(weights, losses) - adversarial_weight * adversarial_loss
