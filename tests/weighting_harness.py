"""Runs a weighting method on given per-task gradients, outside any model.

Every method test states its case as a gradient matrix G (N, P) and losses (N,): the same
StepInfo the train step builds, with gram = G Gᵀ and grads = {'g': G}, in `dtype`
(float32 unless a test asks for another).
"""

import jax
import jax.numpy as jnp

from mtl_jax.weighting import Needs, StepInfo, combine, gram_matrix, init_state


def step_info(method, grads, losses, *, present=None, key=0, step=0,
              dtype=jnp.float32) -> StepInfo:
  g = jnp.asarray(grads, dtype)
  losses = jnp.asarray(losses, dtype)
  present = jnp.ones(g.shape[0], bool) if present is None else jnp.asarray(present, bool)
  per_task = method.needs is not Needs.LOSSES
  return StepInfo(losses, present, jax.random.key(key), jnp.asarray(step, jnp.int32),
                  gram_matrix({'g': g}) if per_task else None, {'g': g} if per_task else None)


def run(method, grads, losses, state=None, *, dtype=jnp.float32, **info_kwargs):
  """(update direction (P,), the method's raw output, its new state).

  For LOSSES and GRAM methods the direction is Σ out_i g_i, as the train step forms it.
  GRADS methods are initialised with grads_like = the shape of one row of `grads`.
  """
  info = step_info(method, grads, losses, dtype=dtype, **info_kwargs)
  g = {'g': jnp.asarray(grads, dtype)}
  if state is None:
    state = init_state(method, len(info.losses), {'g': jax.ShapeDtypeStruct(g['g'].shape[1:],
                                                                            dtype)})
  out, state = method.update(info, state)
  direction = out['g'] if method.needs is Needs.GRADS else combine(out, g)['g']
  return direction, out, state
