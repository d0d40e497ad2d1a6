"""Uncertainty weighting (UW).

Kendall, Gal, Cipolla 2018, "Multi-task learning using uncertainty to weigh losses for scene
geometry and semantics" (CVPR). Each task has a learned s_i = log σ_i² and the objective is

  Σ_i [ exp(-s_i) L_i / 2 + s_i / 2 ],

the paper's regression form, used for every task as LibMTL's `UW` does (the paper's
classification form drops the 1/2 on the loss term). Its gradient with respect to the model
is Σ_i λ_i ∇L_i with λ_i = exp(-s_i) / 2, so this is a loss weighter (one backward pass).
s is trained inside `update` with its own optimizer (Adam) on the analytic gradient
∂/∂s_i = -exp(-s_i) L_i / 2 + 1/2, whose zero is σ_i² = exp(s_i) = L_i. The step's λ uses s
before this step's update of s, as one joint gradient step on (θ, s) would.

Defaults: s_0 = 0 (λ = 1/2 at the first step; LibMTL starts at s = -0.5), Adam with
learning rate 1e-3 (LibMTL trains s with the model's optimizer; the Nash-MTL/FAMO code uses
0.025 for method parameters). An absent task gets λ_i = 0 and its s_i and Adam moments are
left unchanged (Adam's shared step count still advances).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.weighting.base import (Method, Needs, StepInfo, compute_dtype,
                                    masked_optimizer_step)


class UncertaintyState(NamedTuple):
  log_variance: jax.Array  # s (N,)
  opt_state: Any  # s's Adam state


def uncertainty(learning_rate: float = 1e-3, init_log_variance: float = 0.0) -> Method:
  optimizer = optax.adam(learning_rate)

  def init(num_tasks):
    log_var = jnp.full((num_tasks,), init_log_variance, jnp.float32)
    return UncertaintyState(log_var, optimizer.init(log_var))

  def update(info: StepInfo, state: UncertaintyState):
    log_var, opt_state = state
    precision = jnp.exp(-log_var)
    weights = jnp.where(info.present, precision / 2, 0.0).astype(compute_dtype(info.losses))
    grad = jnp.where(info.present, 0.5 - precision * info.losses / 2, 0.0).astype(log_var.dtype)
    log_var, opt_state = masked_optimizer_step(optimizer, grad, opt_state, log_var,
                                               info.present)
    return weights, UncertaintyState(log_var, opt_state)

  return Method(init, update, Needs.LOSSES)
