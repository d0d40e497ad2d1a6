"""The joint objective: Σ_i λ_i L_i + penalty − λ_adv L_adv.

Weights come in as data, formed each step by the run's weighting method (mtl_jax.weighting);
this module does not know which one. The non-task terms (the architecture's penalty and the
adversary's term, mtl_jax.objectives.adversarial) come in summed as `extra`.
"""

import jax
import jax.numpy as jnp


def joint_loss(losses: jax.Array, weights: jax.Array, extra=0.0) -> jax.Array:
  return jnp.dot(weights, losses) + extra
