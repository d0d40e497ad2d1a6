"""Dynamic weight average (DWA).

Liu, Johns, Davison 2019, "End-to-end multi-task learning with attention" (CVPR).

  λ_i = n exp(r_i / T) / Σ_j exp(r_j / T),   r_i = L̄_i(t-1) / L̄_i(t-2),   T = 2,

with λ_i = 1 until two averages exist. The paper and LibMTL's `DWA` take L̄ as a task's mean
training loss over an epoch and sum λ to N. This code base is step based, so an "epoch" here
is `window` steps, sliding: L̄_i(t-1) is the mean of the task's last `window` losses and
L̄_i(t-2) the mean of the `window` before those (the iteration-window variant of the
Nash-MTL/FAMO code bases, default window 25 as there). The weights at a step use only the
losses of earlier steps, as the paper's weights for epoch e use epochs e-1 and e-2.
`window=1` is the per-step ratio L_i(t-1)/L_i(t-2).

Absent tasks: a task's history holds only steps where it was present (its own ring buffer
position), the softmax runs over the present tasks, and n is their number (so the present
weights sum to n, which is N when all are present). Until every present task has 2·window
recorded losses all present weights are 1, the paper's warm-up.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import Method, Needs, StepInfo, compute_dtype


class DWAState(NamedTuple):
  history: jax.Array  # (2·window, N) ring buffer of each task's recorded losses
  count: jax.Array  # (N,) int32, how many losses each task has recorded


def dwa(temperature: float = 2.0, window: int = 25) -> Method:
  if window < 1:
    raise ValueError(f'dwa: window must be at least 1, got {window}.')
  size = 2 * window

  def init(num_tasks):
    return DWAState(jnp.zeros((size, num_tasks), jnp.float32),
                    jnp.zeros((num_tasks,), jnp.int32))

  def update(info: StepInfo, state: DWAState):
    history, count = state
    # Row j of `newest_first` is each task's (j+1)-th most recent recorded loss.
    rows = (count[None, :] - 1 - jnp.arange(size)[:, None]) % size
    newest_first = jnp.take_along_axis(history, rows, axis=0)
    recent = newest_first[:window].mean(0)
    older = newest_first[window:].mean(0)
    ratio = jnp.where(older > 0, recent / jnp.where(older > 0, older, 1.0), 1.0)

    # Absent tasks leave the softmax (-inf logit); with none present the NaNs are masked below.
    logits = jnp.where(info.present, ratio / temperature, -jnp.inf)
    dynamic = info.present.sum() * jax.nn.softmax(logits)
    warm = jnp.all(jnp.where(info.present, count >= size, True))
    weights = jnp.where(info.present, jnp.where(warm, dynamic, 1.0), 0.0)

    # Record this step's losses of the present tasks only (in the history's own dtype).
    slot = jnp.arange(size)[:, None] == (count % size)[None, :]
    history = jnp.where(slot & info.present[None, :],
                        info.losses[None, :].astype(history.dtype), history)
    return (weights.astype(compute_dtype(info.losses)),
            DWAState(history, count + info.present.astype(jnp.int32)))

  return Method(init, update, Needs.LOSSES)
