"""GradVac: gradient vaccine, adaptive gradient-similarity targets.

Wang, Tsvetkov, Firat, Cao (2021), "Gradient vaccine: investigating and improving multi-task
optimization in massively multilingual models", ICLR 2021 (Algorithm 1).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import Method, Needs, StepInfo, compute_dtype
from mtl_jax.weighting.pcgrad import task_orders


class GradVacState(NamedTuple):
  target: jax.Array  # (N, N) φ̂_ij, the EMA similarity targets; the diagonal is unused


def vaccine(gram: jax.Array, target: jax.Array, orders: jax.Array, usable: jax.Array,
            beta: float) -> tuple[jax.Array, jax.Array]:
  """(C, new targets) with g_i^PC = Σ_k C_ik g_k, for the visiting orders `orders`."""
  gram = gram.astype(compute_dtype(gram))
  n = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))

  def row(i, order, goals):
    def visit(t, carry):
      c, goals = carry
      j = order[t]
      dot = jnp.sum(c * gram[:, j])  # g_i^PC · g_j
      norm_pc = jnp.sqrt(jnp.maximum(jnp.sum(jnp.outer(c, c) * gram), 0.0))  # ||g_i^PC||
      valid = (j != i) & usable[j] & (norm_pc > 0)
      # Safe denominators: an invalid pair computes a dummy value and changes nothing.
      phi = jnp.clip(dot / jnp.where(valid, norm_pc * norms[j], 1.0), -1.0, 1.0)
      goal = goals[j]
      # φ̂ can only reach ±1 if every past φ was exactly ±1; the floor keeps w finite then.
      goal_sin = jnp.maximum(jnp.sqrt(jnp.maximum(1.0 - goal**2, 0.0)), 1e-6)
      w = norm_pc * (goal * jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0)) - phi * goal_sin) / (
          jnp.where(valid, norms[j], 1.0) * goal_sin)
      c = c.at[j].add(jnp.where(valid & (phi < goal), w, 0.0))
      goals = goals.at[j].set(jnp.where(valid, (1.0 - beta) * goal + beta * phi, goal))
      return c, goals

    start = (jax.nn.one_hot(i, n, dtype=gram.dtype), goals)
    return jax.lax.fori_loop(0, n, visit, start)

  return jax.vmap(row)(jnp.arange(n), orders, target.astype(gram.dtype))


def gradvac(beta: float = 0.01) -> Method:
  """GradVac as a GRAM method: coefficients c with Σ_i c_i g_i = Σ_i g_i^PC.

  For each task i, g_i^PC starts at g_i; for every other task j, in a random order drawn
  per i from info.key (the same draw as pcgrad), with φ_ij = cos(g_i^PC, g_j):
      if φ_ij < φ̂_ij:
        g_i^PC <- g_i^PC + ||g_i^PC|| (φ̂_ij sqrt(1-φ_ij²) - φ_ij sqrt(1-φ̂_ij²))
                                      / (||g_j|| sqrt(1-φ̂_ij²)) g_j
      φ̂_ij <- (1-β) φ̂_ij + β φ_ij      (φ_ij as measured, before the correction)
  which makes cos(g_i^PC, g_j) = φ̂_ij exactly when it was below. The targets start at 0,
  so the first step is PCGrad (pcgrad). The update is the SUM Σ_i g_i^PC (paper, LibMTL).
  One target per task pair for the whole shared gradient (LibMTL's default group_type 0,
  'whole model'); the paper's per-layer granularity is not implemented. Exact on the Gram,
  tracking g_i^PC as a coefficient row; state GradVacState holds φ̂ (N, N).

  beta: EMA rate. Default 0.01, the paper's β = 1e-2; LibMTL and the Aligned-MTL code
  default to 0.5.

  Absent or zero-gradient tasks: a pair (i, j) where g_j or g_i^PC is zero is skipped: no
  correction and φ̂_ij is left as it was (nothing was measured). Absent tasks get
  coefficient 0.

  φ̂_ij is updated after every visited pair, as in the paper's Algorithm 1 and in LibMTL
  since its fix of February 2024 (commit d2d84fa; before it, LibMTL updated φ̂_ij only when
  the correction fired, so from φ̂ = 0 the targets could only decrease). Difference from
  LibMTL: it works in either weighting mode (LibMTL allows parameter gradients only).
  """

  def init(num_tasks):
    return GradVacState(jnp.zeros((num_tasks, num_tasks), jnp.float32))

  def update(info: StepInfo, state: GradVacState):
    gram = info.gram.astype(compute_dtype(info.gram))
    usable = info.present & (jnp.diag(gram) > 0)
    coefficients, target = vaccine(gram, state.target, task_orders(info.key, gram.shape[0]),
                                   usable, beta)
    return (jnp.where(info.present, coefficients.sum(0), 0.0),
            GradVacState(target.astype(state.target.dtype)))

  return Method(init, update, Needs.GRAM)
