"""Nash-MTL: the Nash bargaining solution over the task gradients."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.weighting import _simplex
from mtl_jax.weighting.base import Method, Needs, StepInfo

RIDGE = 1e-8  # only for existence (f is unbounded when 0 is in the gradients' cone)
_LINE_SEARCH = 30  # backtracking candidates 2^-k, k < 30, evaluated at once


class NashState(NamedTuple):
  alpha: jax.Array  # (N,) the last solved weights (before max_norm), for update_weights_every


def nash_mtl(max_norm: float = 1.0, update_weights_every: int = 1, max_iter: int = 50
             ) -> Method:
  """Nash-MTL, Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya (2022),
  "Multi-task learning as a bargaining game" (ICML).

  The bargaining solution is the α > 0 with (GGᵀ α)_i = 1/α_i for every task, i.e.
  K α = 1/α elementwise (K the Gram); the update is Σ α_i g_i. We solve it as the unique
  minimiser of the strictly convex, self-concordant

    f(α) = ½ αᵀ K α - Σ_i log α_i   (α > 0),   ∇f = K α - 1/α,

  by Newton's method (Cholesky of D(K + D⁻²)D = DKD + I, D = diag(α)) with a backtracking
  line search while the Newton decrement λ ≥ 0.3 and full steps below it (quadratic
  convergence: f is self-concordant, so those stay feasible), at most
  `max_iter` iterations, from α_0 = t/√diag(K) with t making α_0ᵀKα_0 = N. The official
  code instead runs up to `optim_niter` = 20 convex-concave linearisations, each a cvxpy
  (ECOS) problem, warm-started from the previous step's α and stopped at ‖Kα - 1/α‖ < 1e-3;
  we have no such option, we solve to float32 convergence from a cold start.

  We solve on K/‖K‖_F (Frobenius) for conditioning and scale back (scaling K by s scales
  the solution by 1/√s), so α is the bargaining solution of K itself. The official code
  and LibMTL also solve on K/‖K‖_F, but their cvxpy constraint multiplies α back by the
  normalisation factor, so they too return the solution of K (LibMTL's numbers agree).

  Options of the official code (defaults theirs, kept here):
    max_norm=1.0: the official code clips the shared parameters' gradient norm to max_norm
      after the backward pass; here the coefficients are scaled by min(1, max_norm/‖d‖),
      ‖d‖² = αᵀKα, which is the same thing in parameter mode (in representation mode it
      clips the representation-space update). ≤ 0 disables.
    update_weights_every=1: α is re-solved when step % update_weights_every == 0 and reused
      (from the state) in between; max_norm still uses the current gradients. A task absent
      at the re-solve step keeps weight 0 until the next one.

  The raw solution has ‖Σ α_i g_i‖² = αᵀKα = N, and it is invariant to rescaling a task:
  g_i -> s_i g_i gives α_i -> α_i/s_i and the same update.

  Absent tasks, and present tasks whose gradient is numerically 0, are excluded
  (coefficient 0; the condition holds over the others). If 0
  is in the convex cone of the gradients (e.g. two opposite gradients) f is unbounded below
  and no solution exists; a ridge ½·1e-8 Σ ‖g_i‖² α_i² added to f (always on; it moves a
  regular solution by ~1e-8 α_i²‖g_i‖² relatively) keeps it bounded, so the weights grow
  large (≈1e4/‖g_i‖) while the update stays of norm ≤ √N, up to float32 cancellation
  (~1e-3 ‖g‖ with weights that large): a finite answer, not an accurate one.
  """
  if update_weights_every < 1:
    raise ValueError(f'nash_mtl: update_weights_every must be >= 1, got {update_weights_every}.')

  def init(num_tasks):
    return NashState(jnp.zeros((num_tasks,), jnp.float32))

  def update(info: StepInfo, state):
    # A task whose gradient is 0 can gain nothing from any direction (α_i(Kα)_i = 1 has
    # no solution): it sits out the bargain with weight 0.
    present = _simplex.nonzero(info.gram, info.present)
    gram = jnp.where(present[:, None] & present[None, :], info.gram, 0.0)
    frobenius = jnp.sqrt(jnp.sum(gram ** 2))
    frobenius = jnp.where(frobenius > 1e-30, frobenius, 1.0)
    alpha = solve(gram / frobenius, present, max_iter) / jnp.sqrt(frobenius)
    if update_weights_every > 1:
      fresh = info.step % update_weights_every == 0
      alpha = jnp.where(fresh, alpha, state.alpha)
    alpha = jnp.where(present, alpha, 0.0)
    weights = alpha
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(alpha @ gram @ alpha, 0.0))
      weights = alpha * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return weights, NashState(alpha.astype(state.alpha.dtype))

  return Method(init, update, Needs.GRAM)


def solve(gram: jax.Array, mask: jax.Array, max_iter: int = 50) -> jax.Array:
  """The α > 0 (0 off mask) with (K + ridge) α = 1/α on the masked tasks."""
  k = _simplex.masked_gram(gram, mask)  # identity off mask: those α_i solve α = 1/α, = 1
  # Kept apart from K: added to K's diagonal it would round away in float32.
  ridge = _simplex.ridge(k, mask) * (RIDGE / _simplex.RIDGE)
  num = k.shape[0]
  steps = 2.0 ** -jnp.arange(_LINE_SEARCH, dtype=k.dtype)

  def objective(a):
    return 0.5 * jnp.einsum('...i,ij,...j->...', a, k, a) + 0.5 * jnp.sum(
        ridge * a ** 2 - 2.0 * jnp.log(jnp.maximum(a, 1e-30)), axis=-1)

  def cond(carry):
    i, _, decrement, _ = carry
    return (i < max_iter) & (decrement > 1e-11)

  def body(carry):
    i, a, _, _ = carry
    grad = k @ a + ridge * a - 1.0 / a
    # Newton system in the scaled variables α∘y: (D K D + I) y = -D ∇f, D = diag(α); its
    # eigenvalues are >= 1, so the Cholesky stays safe even where K is singular.
    scaled = a[:, None] * k * a[None, :] + jnp.diag(1.0 + ridge * a ** 2)
    delta = a * _simplex.spd_solve(scaled, -a * grad)
    decrement = -grad @ delta  # λ², the Newton decrement squared
    candidates = a + steps[:, None] * delta
    ok = jnp.all(candidates > 0.0, axis=1) & (
        objective(candidates) <= objective(a) - 0.25 * steps * decrement)
    searched = jnp.where(jnp.any(ok), steps[jnp.argmax(ok)], 0.0)
    # Below λ = 0.3 a full Newton step stays feasible (self-concordance) and converges
    # quadratically; float32 rounding of f would make Armijo reject it there.
    t = jnp.where(decrement < 0.09, 1.0, searched)
    # Where α is so large that DKD swamps the identity in float32 (only near the unbounded
    # case) the Cholesky can fail: keep the last finite α.
    stalled = (t == 0.0) | ~jnp.all(jnp.isfinite(delta))
    t = jnp.where(stalled, 0.0, t)
    delta = jnp.where(stalled, 0.0, delta)
    return i + 1, a + t * delta, jnp.where(stalled, 0.0, decrement), stalled

  a0 = 1.0 / jnp.sqrt(jnp.diagonal(k))
  a0 = a0 * jnp.sqrt(num / (a0 @ k @ a0 + ridge @ a0 ** 2))
  _, a, _, _ = jax.lax.while_loop(cond, body, (0, a0, jnp.asarray(jnp.inf, k.dtype), False))
  return jnp.where(mask, a, 0.0)
