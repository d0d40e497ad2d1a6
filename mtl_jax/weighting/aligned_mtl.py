"""Aligned-MTL: aligning the principal components of the task gradients.

Senushkin, Patakin, Kuznetsov, Konushin (2023), "Independent component alignment for
multi-task learning", CVPR 2023.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo, compute_dtype

_HIGHEST = jax.lax.Precision.HIGHEST


def alignment_matrix(gram: jax.Array, present: jax.Array) -> jax.Array:
  """(N, N) B such that the rows of B G are orthogonal with equal norms sqrt(λ_min).

  With M = G Gᵀ = V Λ Vᵀ restricted to the eigenvalues above the tolerance
  tol = λ_max · N · eps (the official code's numerical rank; eps of the Gram's dtype,
  float32 as there unless the gradients are float64),
      B = sqrt(λ_min) V Λ^{-1/2} Vᵀ ,
  so (B G)(B G)ᵀ = λ_min V Vᵀ: the condition number of the aligned gradients is 1 on the
  span of the gradients.
  """
  gram = gram.astype(compute_dtype(gram))
  both = present[:, None] & present[None, :]
  gram = jnp.where(both, 0.5 * (gram + gram.T), 0.0)  # symmetric; absent rows exactly 0
  eigenvalues, vectors = jnp.linalg.eigh(gram)
  tol = jnp.maximum(eigenvalues.max(), 0.0) * gram.shape[0] * jnp.finfo(gram.dtype).eps
  kept = eigenvalues > tol
  smallest = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
  # All gradients zero: nothing is kept, and B = 0 instead of inf · 0.
  scale = jnp.where(kept.any(), jnp.sqrt(jnp.where(kept.any(), smallest, 1.0)), 0.0)
  inv_sqrt = jnp.where(kept, jax.lax.rsqrt(jnp.where(kept, eigenvalues, 1.0)), 0.0)
  return scale * jnp.matmul(vectors * inv_sqrt, vectors.T, precision=_HIGHEST)


def aligned_mtl(task_weights: Sequence[float] = ()) -> Method:
  """Aligned-MTL as a GRAM method: c = Bᵀ w, so Σ_i c_i g_i = Σ_k w_k (B G)_k.

  The gradient matrix G (rows g_i) is replaced by the closest matrix with orthogonal rows
  (the Procrustes solution U Wᵀ of G = U S Wᵀ) rescaled by the smallest singular value:
  Ĝ = σ_min U Wᵀ = B G with B from alignment_matrix (eigenvalues of G Gᵀ below
  λ_max · N · eps are dropped, as the official code does for a rank-deficient G). The update
  is Σ_k w_k ĝ_k. Orthogonal gradients of equal norm are left unchanged; parallel
  gradients give their plain sum; the result does not depend on a common scale of the g_i
  beyond being proportional to it.

  task_weights: the paper's pre-defined task weights w; empty means w_i = 1 for every task,
  the SUM as in the official code and LibMTL (alpha = B.sum(0)). Only the paper's default
  scale σ_min is implemented (the official code also has 'median' and 'rmse').

  The paper's 'Aligned-MTL-UB' variant is the same computation on gradients w.r.t. the
  shared representation: here that is weighting.mode 'representation'; the method does not
  care which mode it runs in.

  Absent tasks: their rows and columns of the Gram are zeroed (they already are 0), so their
  zero eigenvalues fall below the tolerance, and their coefficients are set to 0.
  """

  def init(num_tasks):
    if task_weights and len(task_weights) != num_tasks:
      raise ValueError(f'aligned_mtl: {len(task_weights)} task weights for {num_tasks} tasks.')
    return EmptyState()

  def update(info: StepInfo, state):
    n = info.gram.shape[0]
    b = alignment_matrix(info.gram, info.present)
    w = jnp.asarray(task_weights, b.dtype) if task_weights else jnp.ones(n, b.dtype)
    coefficients = jnp.matmul(b.T, jnp.where(info.present, w, 0.0), precision=_HIGHEST)
    return jnp.where(info.present, coefficients, 0.0), state

  return Method(init, update, Needs.GRAM)
