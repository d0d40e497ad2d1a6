"""Geometric loss strategy (GLS).

Chennupati, Sistu, Yogamani, Rawashdeh 2019, "MultiNet++: Multi-stream feature aggregation
and geometric loss strategy for multi-task learning" (CVPR Workshops). The objective is the
geometric mean of the present tasks' losses, L = (Π_i L_i)^(1/n), whose gradient is
Σ_i λ_i ∇L_i with λ_i = L / (n L_i): the weights of a loss weighter, so one backward pass.
"""

import jax.numpy as jnp

from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo


def gls(eps: float = 1e-8) -> Method:
  """`eps` keeps a zero loss from dividing by zero."""

  def init(num_tasks):
    del num_tasks
    return EmptyState()

  def update(info: StepInfo, state):
    n = jnp.maximum(info.present.sum(), 1)
    log_losses = jnp.where(info.present, jnp.log(info.losses + eps), 0.0)
    geometric_mean = jnp.exp(log_losses.sum() / n)
    weights = geometric_mean / (n * (info.losses + eps))
    return jnp.where(info.present, weights, 0.0), state

  return Method(init, update, Needs.LOSSES)
