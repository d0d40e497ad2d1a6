"""CAGrad: the update that maximises the worst task's improvement near the mean gradient."""

import jax.numpy as jnp

from mtl_jax.weighting import _simplex
from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo

RESCALES = (0, 1, 2)


def cagrad(c: float = 0.4, rescale: int = 1, max_iter: int | None = None) -> Method:
  """Conflict-Averse Gradient descent, Liu, Liu, Jin, Stone & Liu (2021), "Conflict-averse
  gradient descent for multi-task learning" (NeurIPS).

  With g_0 = (1/N) Σ g_i (N = the number of present tasks) the update direction is

    d = argmax_{‖d - g_0‖ ≤ c‖g_0‖} min_i g_i·d,

  found through the dual over the simplex
    w = argmin_{w ≥ 0, Σ w = 1} g_wᵀ g_0 + c‖g_0‖ ‖g_w‖,   g_w = Σ w_i g_i,
  d = g_0 + (c‖g_0‖ / ‖g_w‖) g_w,  so ‖d - g_0‖ = c‖g_0‖ exactly (d = g_0 when g_w = 0).

  Returned coefficients: c_i = N (1/N + λ w_i) / s with λ = c‖g_0‖/‖g_w‖, i.e. the update is
  N d / s. `rescale` (as the official code and LibMTL): 1 -> s = 1 + c² (default, both),
  2 -> s = 1 + c, 0 -> s = 1. The factor N is the official code's "match the sum loss"
  (its overwrite_grad multiplies by the number of tasks); LibMTL omits it (its update is
  d / s, 1/N of ours), our EW being the sum Σ g_i makes the official convention the matching
  one here.

  c = 0.4: the official repository's NYUv2 run script (--alpha 0.4) and the paper's choice
  for NYUv2/Cityscapes; the official function default and LibMTL's `calpha` default are 0.5.
  c = 0 gives the mean gradient (times N/s).

  Solver: the dual is solved exactly (up to rounding in the Gram's dtype) by a primal
  active-set method in JAX: on a face S the stationary point has a closed form (a quadratic
  in the multiplier), and where the face has none F decreases along a ray to the simplex's
  boundary; see `_simplex.active_set`. The official code and LibMTL call scipy's SLSQP.

  Degenerate case: when 0 is in the hull and the dual optimum has g_w = 0 (numerically:
  ‖g_w‖² ≤ 1e-7 Σ w_i ‖g_i‖²), the maximiser d is not determined by w; we return d = g_0
  (λ = 0) where the official code would add c‖g_0‖ times the direction of rounding noise.

  Absent tasks are excluded: g_0 is the mean over present tasks, w lives on their simplex,
  and their coefficient is 0.
  """
  if rescale not in RESCALES:
    raise ValueError(f'cagrad: rescale {rescale!r} is not one of {RESCALES}.')
  if c < 0:
    raise ValueError(f'cagrad: c must be >= 0, got {c}.')
  divisor = {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[rescale]

  def init(num_tasks):
    return EmptyState()

  def update(info: StepInfo, state):
    present = info.present
    n = present.sum()
    w0 = jnp.where(present, 1.0, 0.0) / jnp.maximum(n, 1)
    w, lam = solve(info.gram, present, c, max_iter)
    coefficients = n * (w0 + lam * w) / divisor
    return jnp.where(present, coefficients, 0.0), state

  return Method(init, update, Needs.GRAM)


def solve(gram, mask, c, max_iter=None):
  """(w, λ): the dual solution over the masked simplex and λ = c‖g_0‖/‖g_w‖ (0 if g_w = 0)."""
  num = gram.shape[0]
  k = _simplex.masked_gram(gram / _simplex.gram_scale(gram, mask), mask)
  rid = _simplex.ridge(k, mask)
  w0 = jnp.where(mask, 1.0, 0.0) / jnp.maximum(mask.sum(), 1)
  b = jnp.where(mask, k @ w0, 0.0)  # b_i = g_i·g_0
  r = c * jnp.sqrt(jnp.maximum(w0 @ b, 0.0))  # c‖g_0‖

  def subspace(support):
    # Stationarity on the face: b + r K w/‖w‖_K = μ 1, Σ w = 1. With v = w/‖w‖_K,
    # v = K⁻¹(μ1 - b)/r and vᵀKv = 1 give a(μ - β/a)² = r² - (γ - β²/a), where
    # a = 1ᵀK⁻¹1, β = 1ᵀK⁻¹b, γ = bᵀK⁻¹b; the root with Σ v > 0 is the minimiser. When
    # r² < γ - β²/a, F has no minimiser on the face and decreases without bound along
    # the ray below (slope √(γ-β²/a) (r - √(γ-β²/a)) < 0).
    z = _simplex.face_solve(k, support, rid, jnp.stack([jnp.ones(num, k.dtype), b], axis=1))
    z1, zb = z[:, 0], z[:, 1]
    a, beta = z1.sum(), zb.sum()
    gamma = jnp.where(support, b, 0.0) @ zb
    slack = r ** 2 - jnp.maximum(gamma - beta ** 2 / a, 0.0)
    ray = beta / a * z1 - zb  # Σ ray = 0
    target = z1 / a + ray / jnp.sqrt(jnp.maximum(a * slack, 1e-30))
    bounded = (slack > 0.0) & jnp.all(jnp.isfinite(target))
    return jnp.where(bounded, target, ray), bounded

  def gradient(w):
    # ∇F_i = g_i·g_0 + r g_i·u (‖u‖ = 1): terms of size ‖g_i‖ (‖g_0‖ + r).
    kw = k @ w
    norm_g0 = jnp.sqrt(jnp.maximum(w0 @ b, 0.0))
    return (b + r * kw / jnp.sqrt(jnp.maximum(w @ kw, 1e-30)),
            jnp.sqrt(jnp.maximum(jnp.diagonal(k), 0.0)) * (norm_g0 + r))

  start = jnp.argmin(jnp.where(mask, b + r * jnp.sqrt(jnp.diagonal(k)), jnp.inf))
  w = _simplex.active_set(subspace, gradient, start, mask, max_iter or 4 * num + 8, k.dtype)
  # g_w numerically 0 (float32 noise ~1e-7 of the squared norms): its direction is noise,
  # so take d = g_0 rather than g_0 + c‖g_0‖ times a random unit vector.
  gw_sq = w @ k @ w
  tiny = gw_sq <= 1e-7 * (w @ jnp.where(mask, jnp.diagonal(k), 0.0))
  lam = jnp.where(tiny, 0.0, r / jnp.sqrt(jnp.where(tiny, 1.0, gw_sq)))
  return w, lam
