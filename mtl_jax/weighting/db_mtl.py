"""Dual-balancing multi-task learning (DB-MTL).

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Kwok 2023, "Dual-balancing for multi-task learning"
(arXiv 2308.12029). Loss-scale balancing: each task's loss is replaced by log(L_i + ε), whose
gradient is g_i / (L_i + ε) (exact, from the given g_i). Those are averaged over steps,

  ĝ_i ← β_t ĝ_i + (1 - β_t) g_i / (L_i + ε),   β_t = β / t^σ,   ĝ_i(0) = 0,

and gradient-magnitude balancing scales every task to the largest norm:

  update = Σ_i (max_j ||ĝ_j|| / (||ĝ_i|| + 1e-8)) ĝ_i.

Defaults β = 0.9, σ = 0 (`beta_sigma`), ε = 1e-8: LibMTL's `DB_MTL` defaults (its
DB_beta, DB_beta_sigma), whose update this follows, including the EMA without bias
correction (the first update is (1 - β) times the balanced gradient). β = 0 is the EMA-free
variant. The EMA is over whole per-task gradients, so this is a GRADS method: `init` gets
`grads_like` and the state holds an (N, ...) copy of it (float32, or float64 for float64
gradients).

Absent tasks: left out of the sum and of the max, their ĝ_i unchanged; t counts each task's
own present steps (LibMTL's global step when every task is always present).
Differences from LibMTL: heads get their plain ∇L_i (the train step's rule for gradient
methods) where LibMTL backpropagates log(L_i + ε) into them too; LibMTL refuses
representation gradients, and in mode 'representation' here the EMA mixes gradients of
different batches' features, which only makes sense with beta=0.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import Method, Needs, StepInfo, compute_dtype


class DBMTLState(NamedTuple):
  ema: Any  # ĝ, a pytree like grads_like (at least float32) with a leading N axis
  count: jax.Array  # (N,) int32, each task's present steps so far


def _per_task(vector, leaf):
  return vector.reshape((-1,) + (1,) * (leaf.ndim - 1))


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> Method:

  if not 0 <= beta < 1 or beta_sigma < 0:
    raise ValueError(f'db_mtl: needs 0 <= beta < 1 and beta_sigma >= 0, got {beta}, '
                     f'{beta_sigma}.')

  def init(num_tasks, grads_like):
    ema = jax.tree.map(lambda x: jnp.zeros((num_tasks,) + tuple(x.shape), compute_dtype(x)),
                       grads_like)
    return DBMTLState(ema, jnp.zeros((num_tasks,), jnp.int32))

  def update(info: StepInfo, state: DBMTLState):
    present = info.present
    count = state.count + present.astype(jnp.int32)
    rate = beta / jnp.maximum(count, 1).astype(info.losses.dtype) ** beta_sigma  # β_t
    scale = 1.0 / (info.losses + eps)  # ∇log(L_i + ε) = g_i / (L_i + ε)

    def step(ema, g):
      log_grad = g.astype(ema.dtype) * _per_task(scale, g).astype(ema.dtype)
      new = log_grad + _per_task(rate, g).astype(ema.dtype) * (ema - log_grad)
      return jnp.where(_per_task(present, g), new, ema)

    ema = jax.tree.map(step, state.ema, info.grads)
    norms = jnp.sqrt(sum(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1)
                         for x in jax.tree.leaves(ema)))
    largest = jnp.max(jnp.where(present, norms, 0.0))
    coefficients = jnp.where(present, largest / (norms + 1e-8), 0.0)
    out = jax.tree.map(lambda e, g: jnp.tensordot(coefficients, e, axes=1).astype(g.dtype),
                       ema, info.grads)
    return out, DBMTLState(ema, count)

  def head_weights(info: StepInfo, state):
    del state
    return jnp.where(info.present, 1.0 / (info.losses + eps), 0.0)  # heads train on log L_i

  return Method(init, update, Needs.GRADS, head_weights)
