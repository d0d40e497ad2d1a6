"""PCGrad: projecting conflicting gradients.

Yu, Kumar, Gupta, Levine, Hausman, Finn (2020), "Gradient surgery for multi-task learning",
NeurIPS 2020 (Algorithm 1).
"""

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo, compute_dtype


def task_orders(key: jax.Array, num_tasks: int) -> jax.Array:
  """(N, N) int32: row i is the random order in which task i visits the tasks.

  One independent permutation of all N tasks per task i (LibMTL and the paper shuffle per i);
  the entry equal to i is skipped by the methods. Shared with gradvac.
  """
  # argsort of i.i.d. uniforms is a uniform permutation (ties have probability ~0); one sort
  # compiles much faster than N calls of jax.random.permutation.
  noise = jax.random.uniform(key, (num_tasks, num_tasks), jnp.float32)  # same in x64 mode
  return jnp.argsort(noise, axis=1).astype(jnp.int32)


def surgery_coefficients(gram: jax.Array, orders: jax.Array, usable: jax.Array) -> jax.Array:
  """(N, N) C with g_i^PC = Σ_k C_ik g_k, for the visiting orders `orders` (see task_orders).

  Every g_i^PC stays in span{g_k}, so the projection
      g_i^PC <- g_i^PC - min(0, g_i^PC·g_j) / ||g_j||² g_j
  only subtracts from C_ij, and g_i^PC·g_j = (C_i G)_j needs nothing but the Gram G.
  Tasks with usable[j] False (absent, or zero gradient) are never projected onto.
  """
  gram = gram.astype(compute_dtype(gram))
  n = gram.shape[0]
  sq_norms = jnp.diag(gram)

  def row(i, order):
    def visit(t, c):
      j = order[t]
      dot = jnp.sum(c * gram[:, j])  # g_i^PC · g_j; elementwise, so no low-precision matmul
      conflict = (j != i) & usable[j] & (dot < 0)
      # The where on the denominator keeps an unusable (zero) g_j from producing 0/0.
      shift = jnp.where(conflict, dot / jnp.where(usable[j], sq_norms[j], 1.0), 0.0)
      return c.at[j].add(-shift)

    return jax.lax.fori_loop(0, n, visit, jax.nn.one_hot(i, n, dtype=gram.dtype))

  return jax.vmap(row)(jnp.arange(n), orders)


def pcgrad() -> Method:
  """PCGrad as a GRAM method: coefficients c with Σ_i c_i g_i = Σ_i g_i^PC.

  For each task i, g_i^PC starts at g_i; for every other task j, in a random order drawn
  per i from info.key (task_orders), if g_i^PC·g_j < 0 then
      g_i^PC <- g_i^PC - (g_i^PC·g_j) / ||g_j||² g_j .
  The projections always use the original g_j. The update is the SUM Σ_i g_i^PC (as the
  paper's Algorithm 1 and LibMTL; not the mean). Exact: computed on the Gram only, tracking
  g_i^PC as a coefficient row (surgery_coefficients). No hyperparameters.

  Absent tasks (info.present False) and tasks with a zero gradient are never projected onto
  (no division by zero) and absent tasks get coefficient 0.

  Differences: LibMTL and the official code let j run over all tasks including i itself
  (a no-op unless g_i^PC·g_i < 0 arises); we follow the paper (j ≠ i). The official code
  draws one shuffled order shared by all i; we draw one per i as the paper and LibMTL do.
  Works in either weighting mode (LibMTL allows parameter gradients only).
  """

  def init(num_tasks):
    del num_tasks
    return EmptyState()

  def update(info: StepInfo, state):
    gram = info.gram.astype(compute_dtype(info.gram))
    usable = info.present & (jnp.diag(gram) > 0)
    coefficients = surgery_coefficients(gram, task_orders(info.key, gram.shape[0]), usable)
    return jnp.where(info.present, coefficients.sum(0), 0.0), state

  return Method(init, update, Needs.GRAM)
