"""Static weights: λ fixed by the config, the classic weighted sum Σ λ_i L_i."""

from collections.abc import Sequence

import jax.numpy as jnp

from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo, compute_dtype


def static(weights: Sequence[float] = ()) -> Method:
  """λ_i = weights[i]; empty means 1 for every task (sum, not mean, as LibMTL's EW)."""

  def init(num_tasks):
    if weights and len(weights) != num_tasks:
      raise ValueError(f'static: {len(weights)} weights for {num_tasks} tasks.')
    return EmptyState()

  def update(info: StepInfo, state):
    dtype = compute_dtype(info.losses)
    lam = jnp.asarray(weights, dtype) if weights else jnp.ones_like(info.losses, dtype)
    return jnp.where(info.present, lam, 0.0), state

  return Method(init, update, Needs.LOSSES)
