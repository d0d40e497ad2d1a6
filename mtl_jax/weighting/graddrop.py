"""GradDrop: gradient sign dropout.

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov (2020), "Just pick a sign: optimizing
deep multitask models with gradient sign dropout", NeurIPS 2020.
"""

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import EmptyState, Method, Needs, StepInfo, compute_dtype


def sign_dropout(grads: jax.Array, uniform: jax.Array, leak: float) -> jax.Array:
  """Σ_i (leak + (1-leak) mask_i) g_i for one (N, ...) leaf and U of shape (...)."""
  g = grads.astype(compute_dtype(grads))
  total, mass = g.sum(0), jnp.abs(g).sum(0)
  # P = ½(1 + Σg/Σ|g|); a coordinate where every g_i is 0 contributes 0 whatever P is.
  purity = 0.5 * (1.0 + jnp.where(mass > 0, total / jnp.where(mass > 0, mass, 1.0), 0.0))
  keep = jnp.where(purity > uniform, g > 0, False) | jnp.where(purity < uniform, g < 0, False)
  kept = (leak + (1.0 - leak) * keep.astype(g.dtype)) * g
  return kept.sum(0).astype(grads.dtype)


def mask_absent(grads: jax.Array, present: jax.Array) -> jax.Array:
  return jnp.where(present.reshape((-1,) + (1,) * (grads.ndim - 1)), grads, 0)


def graddrop(leak: float = 0.0) -> Method:
  """GradDrop as a GRADS method, elementwise on every leaf of the per-task gradients.

  Per coordinate, with the sign purity P = ½(1 + Σ_i g_i / Σ_i |g_i|) and one U ~ Uniform(0,1)
  shared by the tasks,
      mask_i = [P > U]·[g_i > 0] + [P < U]·[g_i < 0]
      update = Σ_i (leak + (1 - leak) mask_i) g_i      (a sum over tasks, as LibMTL)
  so a coordinate keeps only its positive gradients with probability P and only its negative
  ones with probability 1-P; a coordinate where all tasks agree in sign is always kept.
  U is drawn per leaf from a key split off info.key.

  leak: fraction of each gradient that always passes (the paper's leak ℓ, one value for all
  tasks). Default 0.0, LibMTL's default and the paper's plain GradDrop (no leak). (The
  Aligned-MTL authors' code uses the opposite convention: its 'leak' weights the mask.)

  Differences from the paper/LibMTL: they multiply the gradient by sign(A) of the
  representation A before computing P and sum over the batch axis, so P is shared by the
  batch; we have gradients only, so P is per coordinate of the gradient, without the sign(A)
  factor. The paper applies GradDrop at the shared representation (LibMTL allows only that,
  our weighting.mode 'representation'); this method works in either mode.
  Absent tasks have g_i = 0 and contribute nothing; nothing divides by zero.
  """

  def init(num_tasks, grads_like):
    del num_tasks, grads_like
    return EmptyState()

  def update(info: StepInfo, state):
    leaves, treedef = jax.tree.flatten(info.grads)
    keys = jax.random.split(info.key, len(leaves))
    # Absent tasks already have g_i = 0; the mask only makes that explicit.
    out = [sign_dropout(mask_absent(g, info.present),
                        jax.random.uniform(k, g.shape[1:], jnp.float32), leak)  # any dtype
           for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, out), state

  return Method(init, update, Needs.GRADS)
