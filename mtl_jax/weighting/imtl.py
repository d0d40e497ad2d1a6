"""IMTL-G: the update whose projections onto every task's unit gradient are equal."""

import jax.numpy as jnp

from mtl_jax.weighting import _simplex
from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo


def imtl() -> Method:
  """Impartial multi-task learning, gradient part (IMTL-G), Liu, Li, Kuang, Xue, Chen, Yang,
  Liao & Zhang (2021), "Towards impartial multi-task learning" (ICLR).

  With u_i = g_i/‖g_i‖, the paper takes d = Σ α_i g_i with Σ α_i = 1 and d·u_1 = d·u_i for
  all i, solved as α_{2:N} = g_1 Uᵀ (D Uᵀ)⁻¹ (D = [g_1 - g_i], U = [u_1 - u_i]),
  α_1 = 1 - Σ α_{2:N}. The same linear system without a reference task: d·u_j =
  (Kα)_j/‖g_j‖ equal for all j means Kα ∝ n (n_j = ‖g_j‖), so

    α = K⁻¹ n / (1ᵀ K⁻¹ n),   update = Σ α_i g_i,   coefficients c = α (Σ c_i = 1),

  K the Gram of the present tasks. Like the paper, α is not constrained to be positive.

  IMTL-L (the loss part: learned scales e^{s_i} L_i - s_i) is NOT included. LibMTL's IMTL
  nominally combines both, but its `loss_scale` is a plain tensor that is never given to
  the optimizer, so s stays 0 and LibMTL runs IMTL-G on the raw losses, which is what this
  is. The paper's hybrid would be a loss weighter that learns s, chained in front of this
  method (base.chain scales g_i by e^{s_i} and maps α back).

  Absent tasks are excluded (coefficient 0; the conditions hold over present tasks). A
  singular K (linearly dependent gradients, where the paper's inverse does not exist) is
  solved with a 1e-6 ridge relative to each ‖g_i‖² plus one refinement step
  (`_simplex.face_solve`); a present task with g_i = 0 (numerically) has no direction u_i
  and is left out like an absent one.
  """

  def init(num_tasks):
    return EmptyState()

  def update(info: StepInfo, state):
    present = _simplex.nonzero(info.gram, info.present)  # u_i undefined for g_i = 0
    k = _simplex.masked_gram(info.gram / _simplex.gram_scale(info.gram, present), present)
    norms = jnp.where(present, jnp.sqrt(jnp.maximum(jnp.diagonal(k), 0.0)), 0.0)
    z = _simplex.face_solve(k, present, _simplex.ridge(k, present), norms)
    total = z.sum()
    total = jnp.where(jnp.abs(total) > 1e-30, total, 1e-30)
    return jnp.where(present, z / total, 0.0), state

  return Method(init, update, Needs.GRAM)
