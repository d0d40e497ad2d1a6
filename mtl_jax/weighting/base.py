"""The contract every loss-weighting and gradient-aggregation method follows.

Modelled on optax: a method is a small factory returning `Method(init, update, needs)`,

  state = method.init(num_tasks)               # LOSSES and GRAM methods
  state = method.init(num_tasks, grads_like)   # GRADS methods; grads_like has the shapes of
                                               # one task's gradient, for gradient-sized state
  out, state = method.update(info, state)

where `info` is a `StepInfo` and `needs` tells the train step what to put in it. The step
computes only that, inside the one compiled step:

  LOSSES  info.losses -> out = λ (N,). The update is the gradient of Σ λ_i L_i, taken with
          ONE backward pass (a VJP with λ as the cotangent); no per-task gradient exists.
  GRAM    info.gram   -> out = c (N,). The update is Σ c_i g_i, formed from the per-task
          gradients g_i the step already holds.
  GRADS   info.grads  -> out = the update itself, a pytree like one g_i.

g_i are the gradients of L_i with respect to the shared parameters, or with respect to the
shared representation (config `weighting.mode`); the step maps a representation-space update
back to the parameters with one more backward pass. Task heads always get their own plain
gradients ∇L_i, unless a GRAM or GRADS method says otherwise with `head_weights` (GradNorm's
weighted loss trains its heads with w_i ∇L_i). Every method receives `info.present`: a task with no labelled unit in the
batch has L_i = 0 and g_i = 0, and its weight or coefficient must come out 0.

Methods are pure functions of their inputs; randomness comes from `info.key`.

Dtypes: a method computes and returns its outputs in the dtype of its inputs, at least
float32 (`compute_dtype`: bfloat16 gradients are combined in float32; float64 ones, with
jax_enable_x64, in float64). Its state keeps the dtypes `init` gave it (float32, or for
gradient-sized state that of `grads_like`), so a jitted loop carries the same types every
step; random draws are float32 whatever the dtype, so a key gives the same draw in both.
"""

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Needs(enum.Enum):
  LOSSES = 'losses'
  GRAM = 'gram'
  GRADS = 'grads'


class StepInfo(NamedTuple):
  losses: jax.Array  # (N,) per-task losses of this step (constants: no gradient flows)
  present: jax.Array  # (N,) bool, the task has labelled units in this batch
  key: jax.Array  # a fresh PRNG key for this step
  step: jax.Array  # int32, steps taken before this one
  gram: jax.Array | None = None  # (N, N) g_i·g_j, for GRAM and GRADS methods
  grads: Any = None  # per-task gradients, every leaf with a leading N axis; GRADS only


class Method(NamedTuple):
  init: Callable[..., Any]  # num_tasks[, grads_like] -> state (a pytree of arrays)
  update: Callable[[StepInfo, Any], tuple[Any, Any]]  # (info, state) -> (out, state)
  needs: Needs
  # GRAM/GRADS only: (info, state before update) -> (N,) weights of the heads' gradients
  # ∇L_i; None means 1 for every present task. (A loss weighter's heads always get λ.)
  head_weights: Callable[[StepInfo, Any], jax.Array] | None = None


def compute_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype a method computes in for an input `x`: x's own, at least float32."""
  return jnp.promote_types(x.dtype, jnp.float32)


def head_weights(method: Method, info: StepInfo, state) -> jax.Array:
  """The weights of the task heads' own gradients for a GRAM or GRADS method."""
  if method.head_weights is None:
    return info.present.astype(compute_dtype(info.losses))
  return method.head_weights(info, state)


def needs_task_gradients(method: Method, diagnostics: bool) -> bool:
  """Whether a step takes per-task gradients: a gradient method needs them, and so do the
  diagnostics (per-task gradient norms and cosines)."""
  return method.needs is not Needs.LOSSES or diagnostics


class EmptyState(NamedTuple):
  """The state of a stateless method."""


def init_state(method: Method, num_tasks: int, grads_like=None):
  """Calls `method.init` as the contract says: GRADS methods also get `grads_like`."""
  if method.needs is Needs.GRADS:
    return method.init(num_tasks, grads_like)
  return method.init(num_tasks)


def masked_optimizer_step(optimizer: optax.GradientTransformation, grads, opt_state, params,
                          mask):
  """One optimizer step on per-task parameters (N,) that leaves masked-out tasks unchanged.

  Per-task leaves of the optimizer state (shape (N,), e.g. Adam's moments) keep their old
  values where `mask` is False; other leaves (Adam's count) advance iff any task is in `mask`.
  """
  updates, new_state = optimizer.update(grads, opt_state, params)
  new_params = jnp.where(mask, optax.apply_updates(params, updates), params)

  def keep(new, old):
    return jnp.where(mask if new.shape == mask.shape else mask.any(), new, old)

  return new_params, jax.tree.map(keep, new_state, opt_state)


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax over the tasks in `mask`; the others get exactly 0 (all masked: all 0)."""
  z = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf))
  return jnp.where(mask, z, 0.0)


def gram_matrix(grads) -> jax.Array:
  """G_ij = g_i · g_j over every leaf of an N-leading pytree, in float32 (float64 if any
  leaf is float64)."""
  leaves = jax.tree.leaves(grads)
  n = leaves[0].shape[0]
  return sum(jnp.dot(x.reshape(n, -1), x.reshape(n, -1).T,
                     precision=jax.lax.Precision.HIGHEST).astype(compute_dtype(x))
             for x in leaves)


def combine(coefficients: jax.Array, grads):
  """Σ_i c_i g_i for an N-leading pytree."""
  return jax.tree.map(lambda g: jnp.tensordot(coefficients.astype(g.dtype), g, axes=1), grads)


def chain(loss_weighting: Method, method: Method) -> Method:
  """Scales each task by a loss weighter's λ_i, then hands the scaled task to `method`.

  With g_i -> λ_i g_i and L_i -> λ_i L_i, a GRAM method sees Λ G Λ and its coefficients
  are mapped back to the unscaled gradients as c_i λ_i.
  """
  if loss_weighting.needs is not Needs.LOSSES:
    raise ValueError('chain: the first method must be a loss weighter (needs LOSSES).')

  def init(num_tasks, grads_like=None):
    return loss_weighting.init(num_tasks), init_state(method, num_tasks, grads_like)

  def update(info: StepInfo, state):
    weights, first = loss_weighting.update(info, state[0])
    scaled = info._replace(
        losses=weights * info.losses,
        gram=None if info.gram is None else info.gram * jnp.outer(weights, weights),
        grads=None if info.grads is None else jax.tree.map(
            lambda g: g * weights.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
            info.grads))
    out, second = method.update(scaled, state[1])
    if method.needs is not Needs.GRADS:
      out = out * weights
    return out, (first, second)

  def heads(info: StepInfo, state):
    # Recomputed from the same info and state, so the same λ (randomness comes from the key).
    weights = loss_weighting.update(info, state[0])[0]
    scaled = info._replace(losses=weights * info.losses)
    return weights * head_weights(method, scaled, state[1])

  return Method(init, update, method.needs, heads)
