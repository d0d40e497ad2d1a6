"""GradNorm.

Chen, Badrinarayanan, Lee, Rabinovich 2018, "GradNorm: Gradient normalization for adaptive
loss balancing in deep multitask networks" (ICML). Task weights w (Σ w = N, w(0) = 1); the
model's update is Σ_i w_i g_i (coefficients w, so a GRAM method). With G_i = ||w_i ∇_W L_i||
on a chosen shared part W, Ḡ their mean, L̃_i = L_i(t) / L_i(0) and r_i = L̃_i / mean_j L̃_j,
w is trained on

  L_grad = Σ_i | G_i - Ḡ r_i^α |,   α = 1.5 (the paper's and LibMTL's default),

whose target Ḡ r_i^α is held constant (the paper), so ∂L_grad/∂w_i = sign(G_i - Ḡ r_i^α)
||∇_W L_i||. w takes one Adam step on that gradient (learning rate 1e-3; the paper does not
fix one, LibMTL trains w with the model's optimizer), is clipped at 0 and renormalised so
that Σ w stays N, the paper's renormalisation. The step's update uses w(t), before this
step's update of w (the paper's Algorithm 1). Heads get w_i ∇L_i (`head_weights`), the
gradient of the weighted loss Σ w_i L_i, as in the paper and LibMTL.

`layer` selects W: '' is all of `info.grads` (the norms come from diag(gram), free), else a
'/'-joined key path prefix of `info.grads`, e.g. 'encoder/layer_3' in mode 'params' (the
paper uses the last shared layer), or 'hidden_states/4' in mode 'representation'.

Conventions and differences from LibMTL's `GradNorm`: LibMTL parametrises w = N softmax(s)
and takes L_i(0) as the first epoch's mean loss, with equal weights during that epoch;
here w is trained directly as in the paper and L_i(0) is the task's loss at the first step
it is present. Absent tasks: w_i = 0 in the output and left out of Ḡ, mean_j L̃_j and the
step; their stored w_i and Adam moments are unchanged and the present weights are
renormalised to their own previous total, so Σ w = N holds across steps.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.weighting.base import (Method, Needs, StepInfo, compute_dtype,
                                    masked_optimizer_step)


class GradNormState(NamedTuple):
  weights: jax.Array  # w (N,)
  opt_state: Any  # w's Adam state
  initial_losses: jax.Array  # (N,) L_i(0)
  has_initial: jax.Array  # (N,) bool, L_i(0) has been recorded


def _path(keys) -> str:
  return jax.tree_util.keystr(keys, simple=True, separator='/')


def squared_norms(grads, layer: str) -> jax.Array:
  """||g_i||² (N,) over the leaves of `grads` whose key path is `layer` or lies below it."""
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  leaves = [x for keys, x in flat
            if _path(keys) == layer or _path(keys).startswith(layer + '/')]
  if not leaves:
    raise ValueError(f'gradnorm: layer {layer!r} matches no gradient; paths: '
                     f'{", ".join(_path(k) for k, _ in flat)}.')
  n = leaves[0].shape[0]
  return sum(jnp.sum(jnp.square(x.astype(compute_dtype(x)).reshape(n, -1)), axis=1)
             for x in leaves)


def gradnorm(alpha: float = 1.5, learning_rate: float = 1e-3, layer: str = '') -> Method:
  optimizer = optax.adam(learning_rate)

  def init(num_tasks):
    weights = jnp.ones((num_tasks,), jnp.float32)
    return GradNormState(weights, optimizer.init(weights), jnp.zeros((num_tasks,), jnp.float32),
                         jnp.zeros((num_tasks,), bool))

  def update(info: StepInfo, state: GradNormState):
    present = info.present
    first = present & ~state.has_initial
    initial = jnp.where(first, info.losses.astype(state.initial_losses.dtype),
                        state.initial_losses)

    sq = jnp.diagonal(info.gram) if not layer else squared_norms(info.grads, layer)
    norms = jnp.sqrt(jnp.maximum(sq, 0.0))
    w = state.weights
    n = jnp.maximum(present.sum(), 1)
    grad_norms = w * norms  # G_i
    mean_norm = jnp.where(present, grad_norms, 0.0).sum() / n
    loss_ratio = jnp.where(present & (initial > 0),
                           info.losses / jnp.where(initial > 0, initial, 1.0), 1.0)
    rate = loss_ratio / jnp.maximum(jnp.where(present, loss_ratio, 0.0).sum() / n, 1e-30)
    target = mean_norm * rate ** alpha
    grad = jnp.where(present, jnp.sign(grad_norms - target) * norms, 0.0).astype(w.dtype)

    new_w, opt_state = masked_optimizer_step(optimizer, grad, state.opt_state, w, present)
    new_w = jnp.maximum(new_w, 0.0)
    total_before = jnp.where(present, w, 0.0).sum()
    total_after = jnp.where(present, new_w, 0.0).sum()
    new_w = jnp.where(present, new_w * total_before / jnp.maximum(total_after, 1e-30), w)

    return (jnp.where(present, w, 0.0).astype(norms.dtype),
            GradNormState(new_w, opt_state, initial, state.has_initial | present))

  def head_weights(info: StepInfo, state):
    return jnp.where(info.present, state.weights, 0.0)  # the heads train on Σ w_i L_i too

  return Method(init, update, Needs.GRAM, head_weights)
