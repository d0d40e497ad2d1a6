"""Small solvers over the probability simplex, shared by the Gram-based methods.

Private (the leading underscore keeps it out of the method registry). Everything works on
an (N, N) Gram matrix and a boolean mask of the tasks that take part; masked-out tasks get
coefficient exactly 0 and never enter a linear solve (their rows and columns are replaced by
the identity). All loops are `lax.while_loop`s with a fixed maximum trip count.

Conventions:
  * Gram matrices are first divided by `gram_scale` (the mean squared norm of the present
    gradients) so that tolerances and the ridge below are relative, not absolute.
  * RIDGE: the Gram of linearly dependent gradients is singular, and nearly parallel task
    gradients make it ill-conditioned. Linear solves on a face S factorise K_SS + ridge
    (RIDGE times each task's own squared norm, see `ridge`) and refine once against the
    unridged K_SS (`face_solve`); objectives and optimality checks use the unridged K.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

RIDGE = 1e-6
_TINY = 1e-30


def gram_scale(gram: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of g_i·g_i over the masked-in tasks (1 when there is nothing to scale by)."""
  diag = jnp.where(mask, jnp.diagonal(gram), 0.0)
  scale = diag.sum() / jnp.maximum(mask.sum(), 1)
  return jnp.where(scale > _TINY, scale, 1.0)


def nonzero(gram: jax.Array, mask: jax.Array) -> jax.Array:
  """mask, less the tasks whose gradient is numerically zero (‖g_i‖² <= 1e-12 max ‖g_j‖²)."""
  diag = jnp.where(mask, jnp.diagonal(gram), 0.0)
  return mask & (diag > jnp.maximum(1e-12 * diag.max(), 1e-30))


def masked_gram(gram: jax.Array, mask: jax.Array) -> jax.Array:
  """K on mask×mask, the identity elsewhere (so masked-out tasks decouple)."""
  both = mask[:, None] & mask[None, :]
  return jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(mask, 0.0, 1.0))


def ridge(gram: jax.Array, mask: jax.Array) -> jax.Array:
  """The per-task ridge RIDGE·max(K_ii, 1e-6·mean K_ii): relative to each task's own squared
  norm (Jacobi scaling), so tasks whose gradients are much smaller than the others' are not
  swamped by it; the floor keeps a present task with a zero gradient positive definite."""
  diag = jnp.diagonal(gram)
  return jnp.where(mask, RIDGE * jnp.maximum(diag, 1e-6 * gram_scale(gram, mask)), 0.0)


def spd_solve(a: jax.Array, rhs: jax.Array) -> jax.Array:
  """a⁻¹ rhs for a symmetric positive definite a (Cholesky)."""
  chol = jnp.linalg.cholesky(a)
  return jax.scipy.linalg.cho_solve((chol, True), rhs)


def face_solve(gram: jax.Array, support: jax.Array, ridge_: jax.Array,
               rhs: jax.Array) -> jax.Array:
  """K_SS⁻¹ rhs_S (zero off the support S) for a PSD K.

  Factorises K_SS + diag(ridge) (Cholesky) and takes one step of iterative refinement
  against the unridged K_SS: the ridge's bias on a nonsingular K_SS drops from O(ridge/λ_min)
  to O((ridge/λ_min)²); along a null direction of K_SS the solution grows like 2/ridge, which
  is the limit the callers want (e.g. the min-norm point 0 of a hull that contains 0).
  """
  a = masked_gram(gram, support)
  chol = jnp.linalg.cholesky(a + jnp.diag(jnp.where(support, ridge_, 0.0)))
  mask = support if rhs.ndim == 1 else support[:, None]
  rhs = jnp.where(mask, rhs, 0.0)
  x = jax.scipy.linalg.cho_solve((chol, True), rhs)
  x = x + jax.scipy.linalg.cho_solve((chol, True), rhs - a @ x)
  return jnp.where(mask, x, 0.0)


def active_set(subspace: Callable, gradient: Callable, start: jax.Array, mask: jax.Array,
               max_iter: int, dtype, tol: float = 1e-7) -> jax.Array:
  """Minimises a convex F over {w ≥ 0, Σ w = 1, w_i = 0 off mask} by a primal active set.

  `subspace(S)` returns (target, bounded): with bounded, the minimiser of F over the affine
  hull {Σ w = 1, w_i = 0 off S}; otherwise a direction p (Σ p = 0) along which F decreases
  without bound on that hull. `gradient(w)` is (∇F(w), s) with s (N,) the magnitude of the
  terms in ∇F_i, so that the test below is relative. Each iteration either moves to the
  face minimiser (and adds the index with the most negative reduced gradient ∇F_i - w·∇F,
  if any is below -tol·s_i) or, when that point leaves the simplex or there is none, moves
  to the simplex boundary along the way and drops the index that hits zero. Every iterate is
  feasible and F never increases (F is convex), so stopping at max_iter is safe. The
  iterates are in `dtype`, that of the Gram matrix.
  """
  n = mask.shape[0]
  x0 = jax.nn.one_hot(start, n, dtype=dtype)

  def cond(carry):
    i, _, _, done = carry
    return (i < max_iter) & ~done

  def body(carry):
    i, x, support, _ = carry
    target, bounded = subspace(support)
    reach = bounded & jnp.all(jnp.where(support, target >= 0.0, True))
    # The face minimiser, plus the best index to bring in.
    g, g_scale = gradient(target)
    violation = (g - jnp.dot(target, g)) / jnp.maximum(g_scale, _TINY)
    violation = jnp.where(mask & ~support, violation, jnp.inf)
    k = jnp.argmin(violation)
    add = violation[k] < -tol
    # Otherwise: move towards the target (or along the direction) until a weight hits 0.
    step = jnp.where(support, jnp.where(bounded, target - x, target), 0.0)
    # Σ step = 0 exactly (rounding would let a long ray step leave the simplex's plane).
    step = jnp.where(support, step - step.sum() / jnp.maximum(support.sum(), 1), 0.0)
    blocking = support & (step < 0.0)
    ratios = jnp.where(blocking, x / jnp.where(blocking, -step, 1.0), jnp.inf)
    r = jnp.argmin(ratios)
    # A ray that is not a descent direction at x is rounding noise (e.g. on a 1-point face).
    descent = bounded | (jnp.dot(gradient(x)[0], step) < 0.0)
    stuck = ~jnp.isfinite(ratios[r]) | ~descent  # nowhere to go
    t = jnp.where(stuck, 0.0, ratios[r])
    x_part = jnp.maximum(x + t * step, 0.0).at[r].set(jnp.where(stuck, x[r], 0.0))
    x_part = x_part / jnp.maximum(x_part.sum(), _TINY)
    support_part = support.at[r].set(support[r] & stuck)
    x = jnp.where(reach, jnp.maximum(target, 0.0), x_part)
    support = jnp.where(reach, support.at[k].set(support[k] | add), support_part)
    done = (reach & ~add) | (~reach & stuck)
    return i + 1, x, support, done

  _, x, _, _ = jax.lax.while_loop(cond, body, (0, x0, x0 > 0, jnp.asarray(False)))
  return jnp.where(mask, x, 0.0)


def min_norm(gram: jax.Array, mask: jax.Array, max_iter: int | None = None) -> jax.Array:
  """argmin over the simplex (of the masked tasks) of wᵀ K w: the min-norm point of the
  convex hull of the g_i is Σ w_i g_i. Exact up to rounding (active set, not Frank-Wolfe)."""
  n = gram.shape[0]
  k = masked_gram(gram / gram_scale(gram, mask), mask)
  rid = ridge(k, mask)

  def subspace(support):
    # min wᵀKw s.t. Σ_S w = 1  =>  w ∝ K_SS⁻¹ 1.
    z = face_solve(k, support, rid, jnp.ones(n, k.dtype))
    return z / z.sum(), jnp.asarray(True)

  def gradient(w):
    # (g_i - d)·d with d = Σ w_j g_j: its terms are of size ‖g_i‖‖d‖ + ‖d‖².
    kw = k @ w
    dd = jnp.maximum(w @ kw, 0.0)
    return kw, jnp.sqrt(jnp.maximum(jnp.diagonal(k), 0.0) * dd) + dd

  start = jnp.argmin(jnp.where(mask, jnp.diagonal(k), jnp.inf))
  return active_set(subspace, gradient, start, mask, max_iter or 4 * n + 8, k.dtype)
