"""MGDA: the min-norm point of the convex hull of the task gradients."""

import jax.numpy as jnp

from mtl_jax.weighting import _simplex
from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo

NORMALIZATIONS = ('none', 'l2', 'loss', 'loss+')
_TINY = 1e-30


def mgda(normalization: str = 'none', max_iter: int | None = None) -> Method:
  """Multiple Gradient Descent Algorithm, Sener & Koltun (2018), "Multi-task learning as
  multi-objective optimization" (NeurIPS).

  With ĝ_i = g_i / n_i, the update is the min-norm element of conv{ĝ_i}:

    α = argmin_{α ≥ 0, Σ α_i = 1} ‖Σ α_i ĝ_i‖²,   update = Σ α_i ĝ_i,   c_i = α_i / n_i,

  so the coefficients returned apply to the UNNORMALISED g_i. `normalization` picks n_i as
  in the paper's code and LibMTL's `mgda_gn`: 'none' n_i = 1; 'l2' n_i = ‖g_i‖; 'loss'
  n_i = L_i; 'loss+' n_i = L_i ‖g_i‖. Default 'none' (LibMTL's default). Σ α_i = 1 (not
  N as in the Nash-MTL repository's MGDA).

  Difference from the official code (and from LibMTL in representation mode): those back-
  propagate Σ α_i L_i, i.e. apply α to the unnormalised g_i; we use c_i = α_i / n_i
  (LibMTL's parameter mode), which is the min-norm element itself. Identical for 'none'.

  Solver: an exact primal active-set method on the Gram matrix (not the paper's Frank-Wolfe
  iteration), at most `max_iter` (default 4N + 8) steps; see `_simplex`. Ties with
  linearly dependent gradients are broken by a 1e-6 relative ridge.

  MGDA-UB (the paper's upper bound) is this method with config weighting.mode =
  'representation': the g_i are then gradients w.r.t. the shared representation.

  Absent tasks are excluded: the hull is over present tasks only (an absent g_i = 0 would
  otherwise make the min-norm point 0) and their coefficient is 0. A zero norm n_i (zero
  gradient or zero loss of a present task) is replaced by 1.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'mgda: normalization {normalization!r} is not one of {NORMALIZATIONS}.')

  def init(num_tasks):
    return EmptyState()

  def update(info: StepInfo, state):
    present = info.present
    grad_norm = jnp.sqrt(jnp.maximum(jnp.diagonal(info.gram), 0.0))
    norm = {'none': jnp.ones_like(info.losses), 'l2': grad_norm, 'loss': info.losses,
            'loss+': info.losses * grad_norm}[normalization]
    norm = jnp.where(present & (norm > _TINY), norm, 1.0)
    gram = info.gram / jnp.outer(norm, norm)
    alpha = _simplex.min_norm(gram, present, max_iter)
    return jnp.where(present, alpha / norm, 0.0), state

  return Method(init, update, Needs.GRAM)
