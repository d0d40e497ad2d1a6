"""Impartial multi-task learning (IMTL): learned loss scales (IMTL-L) and the update with
equal projections on every task's unit gradient (IMTL-G)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.weighting import _simplex
from mtl_jax.weighting.base import Method, Needs, StepInfo, masked_optimizer_step


class IMTLState(NamedTuple):
  log_scale: jax.Array  # s (N,), task i's loss is e^{s_i} L_i - s_i
  opt_state: Any  # s's optimizer state (Adam with coupled weight decay)


def impartial_coefficients(gram: jax.Array, present: jax.Array) -> jax.Array:
  """IMTL-G's α (N,), Σ α = 1 over the present tasks, for the gradients whose Gram is `gram`:
  α = K⁻¹ n / (1ᵀ K⁻¹ n), n_j = ‖g_j‖, so (Σ α_i g_i)·u_j is the same for every task j."""
  present = _simplex.nonzero(gram, present)  # u_i undefined for g_i = 0
  k = _simplex.masked_gram(gram / _simplex.gram_scale(gram, present), present)
  norms = jnp.where(present, jnp.sqrt(jnp.maximum(jnp.diagonal(k), 0.0)), 0.0)
  z = _simplex.face_solve(k, present, _simplex.ridge(k, present), norms)
  total = z.sum()
  total = jnp.where(jnp.abs(total) > 1e-30, total, 1e-30)
  return jnp.where(present, z / total, 0.0)


def imtl(learning_rate: float = 1e-4, weight_decay: float = 1e-5) -> Method:
  """IMTL, Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), "Towards impartial
  multi-task learning" (ICLR): the paper's hybrid, IMTL-L and IMTL-G together.

  IMTL-L: task i's loss becomes e^{s_i} L_i - s_i with a learned scale s_i (s = 0 at the
  start). Its gradient in s_i is e^{s_i} L_i - 1, zero where the scaled loss e^{s_i} L_i is
  1, so the scales keep every task's loss at a comparable size. The task heads train on
  the scaled loss: `head_weights` = e^{s_i}.

  IMTL-G on the scaled gradients g̃_i = e^{s_i} g_i (Gram diag(e^s) K diag(e^s)): with
  ũ_i = g̃_i/‖g̃_i‖ the paper takes d = Σ α_i g̃_i with Σ α_i = 1 and d·ũ_1 = d·ũ_i for all
  i, solved as α_{2:N} = g̃_1 Uᵀ (D Uᵀ)⁻¹ (D = [g̃_1 - g̃_i], U = [ũ_1 - ũ_i]),
  α_1 = 1 - Σ α_{2:N}. The same linear system without a reference task: d·ũ_j =
  (K̃α)_j/‖g̃_j‖ equal for all j means K̃α ∝ ñ (ñ_j = ‖g̃_j‖), so α = K̃⁻¹ñ / (1ᵀK̃⁻¹ñ)
  (`impartial_coefficients`). Like the paper, α is not constrained to be positive. The
  returned coefficients multiply the raw g_i: c_i = α_i e^{s_i}, update Σ c_i g_i. The
  direction of the update does not depend on s (ũ_i = u_i); s sets its length, through
  Σ α_i = 1 on the scaled gradients.

  Order within a step: the update and the head weights use s before this step's update of
  s, as one joint gradient step on (θ, s) does (LibMTL: backward, then optimizer.step).

  Training s: LibMTL's `IMTL.loss_scale` is an nn.Parameter of the model, so its Trainer's
  optimizer trains it with the model: by default Adam, learning rate 1e-4, weight decay
  1e-5 (torch's coupled L2) from LibMTL's config.py; the paper's Algorithm 1 updates s with
  the task-specific parameters, by gradient descent at the model's learning rate. Here s
  has its own optimizer in the state (the model's never sees it): Adam (optax defaults,
  as torch's) after `add_decayed_weights(weight_decay)`, i.e. LibMTL's defaults.
  `learning_rate=0` keeps s = 0: plain IMTL-G.

  Absent tasks are excluded (coefficient 0; the conditions hold over present tasks) and
  their s_i and Adam moments stay as they were. A singular K (linearly dependent
  gradients, where the paper's inverse does not exist) is solved with a 1e-6 ridge relative
  to each ‖g̃_i‖² plus one refinement step (`_simplex.face_solve`); a present task with
  g_i = 0 (numerically) has no direction u_i and is left out of IMTL-G like an absent one,
  while its s_i still trains on its loss.
  """
  optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  def init(num_tasks):
    log_scale = jnp.zeros((num_tasks,), jnp.float32)
    return IMTLState(log_scale, optimizer.init(log_scale))

  def update(info: StepInfo, state: IMTLState):
    scale = jnp.exp(state.log_scale).astype(info.gram.dtype)
    alpha = impartial_coefficients(info.gram * jnp.outer(scale, scale), info.present)
    # ∂/∂s_i (e^{s_i} L_i - s_i); absent tasks are masked out of the step.
    grad = jnp.where(info.present, scale * info.losses - 1.0, 0.0)
    log_scale, opt_state = masked_optimizer_step(
        optimizer, grad.astype(state.log_scale.dtype), state.opt_state, state.log_scale,
        info.present)
    return alpha * scale, IMTLState(log_scale, opt_state)

  def head_weights(info: StepInfo, state: IMTLState):
    return jnp.where(info.present, jnp.exp(state.log_scale), 0.0)  # ∇(e^{s_i} L_i - s_i)

  return Method(init, update, Needs.GRAM, head_weights)
