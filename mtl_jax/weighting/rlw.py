"""Random loss weighting (RLW).

Lin, Ye, Zhang, Tsang 2022, "Reasonable effectiveness of random weighting: a litmus test
for multi-task learning" (TMLR; first as arXiv 2111.10603, "A closer look at loss weighting
in multi-task learning"). Each step draws z ~ N(0, I) from `info.key` and uses

  λ = softmax(z),

LibMTL's `RLW` default (dist='Normal'). Following LibMTL the weights sum to 1, not N (so the
loss is a random convex combination, N times smaller on average than equal weighting's
Σ_i L_i; the Nash-MTL code base scales by N instead). Absent tasks get λ_i = 0 and the
softmax is taken over the present tasks only, so the present weights still sum to 1.
E[λ_i] = 1/n over the n present tasks, by symmetry.
"""

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import (EmptyState, Method, Needs, StepInfo, compute_dtype,
                                    masked_softmax)


def rlw() -> Method:

  def init(num_tasks):
    del num_tasks
    return EmptyState()

  def update(info: StepInfo, state):
    z = jax.random.normal(info.key, info.losses.shape, jnp.float32)  # the same draw in any dtype
    z = z.astype(compute_dtype(info.losses))
    return masked_softmax(z, info.present), state  # absent tasks are left out

  return Method(init, update, Needs.LOSSES)
