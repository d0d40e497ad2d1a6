"""Fast adaptive multitask optimization (FAMO).

Liu, Feng, Stone, Liu 2023, "FAMO: Fast adaptive multitask optimization" (NeurIPS). Task
logits ξ, z = softmax(ξ); the model's update is the gradient of Σ_i z_i log ℓ_i / c with
c = Σ_j z_j / ℓ_j held constant, i.e. a loss weighter with

  λ_i = (z_i / ℓ_i) / Σ_j (z_j / ℓ_j)        (sum 1; ℓ_i = L_i + eps, eps = 1e-8),

as the official code and LibMTL's `FAMO` (both with their minimum losses left at 0). ξ is
trained on the loss decrease δ_i = log ℓ_i(θ_t) - log ℓ_i(θ_{t+1}) with the gradient
∂/∂ξ Σ_i z_i(ξ) δ_i = z ⊙ (δ - zᵀδ), descended by Adam (learning rate 0.025, weight decay
1e-3 added to the gradient, as torch's Adam(weight_decay) in the official code; 0.025 and
1e-3 are LibMTL's defaults, the official example uses weight decay 0.01). A task whose loss
falls faster than the z-weighted mean gets its logit lowered: the balancing.

Deliberate difference: the official code and LibMTL measure ℓ(θ_{t+1}) by a second forward
pass on the same batch right after the model update. To cost no more than equal weighting,
this one takes ℓ(θ_{t+1}) from the NEXT step's losses (another batch) and keeps the previous
losses in the state: at step t+1, ξ is first updated with δ = log ℓ(t) - log ℓ(t+1) and then
gives the weights, the same order as the official code. δ so also carries the difference
between the two batches, noise that the Adam on ξ averages over steps.

Absent tasks: δ is used only for tasks present at both steps (softmax and gradient over
those; other logits and their Adam moments unchanged), and λ is taken over the present
tasks (absent: λ = 0). The first step has no δ and leaves ξ (and Adam's count) unchanged.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.weighting.base import (Method, Needs, StepInfo, masked_optimizer_step,
                                    masked_softmax)


class FamoState(NamedTuple):
  logits: jax.Array  # ξ (N,)
  opt_state: Any  # ξ's Adam state
  prev_losses: jax.Array  # (N,) the previous step's losses
  prev_present: jax.Array  # (N,) bool, the task was present at the previous step


def famo(learning_rate: float = 0.025, weight_decay: float = 1e-3, eps: float = 1e-8
         ) -> Method:
  optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  def init(num_tasks):
    logits = jnp.zeros((num_tasks,), jnp.float32)
    return FamoState(logits, optimizer.init(logits), jnp.zeros((num_tasks,), jnp.float32),
                     jnp.zeros((num_tasks,), bool))

  def update(info: StepInfo, state: FamoState):
    both = info.present & state.prev_present
    delta = jnp.where(both, jnp.log(state.prev_losses + eps) - jnp.log(info.losses + eps), 0.0)
    z = masked_softmax(state.logits, both)
    grad = jnp.where(both, z * (delta - jnp.dot(z, delta)), 0.0).astype(state.logits.dtype)
    logits, opt_state = masked_optimizer_step(optimizer, grad, state.opt_state, state.logits,
                                              both)

    inverse = masked_softmax(logits, info.present) / (info.losses + eps)
    weights = jnp.where(info.present, inverse / jnp.maximum(inverse.sum(), 1e-30), 0.0)
    return weights, FamoState(logits, opt_state, info.losses.astype(state.prev_losses.dtype),
                              info.present)

  return Method(init, update, Needs.LOSSES)
