"""Online mixture weighting in the manner of DoReMi.

Xie et al. 2023, "DoReMi: Optimizing data mixtures speeds up language model pretraining"
(NeurIPS), Algorithm 1. Domain weights α on the simplex move with each domain's excess loss
over a reference model, λ_i = max(L_i − ℓ_ref,i, 0):

  α' = α ⊙ exp(η λ),   α ← (1 − c) α' / Σ α' + c / N,

and the proxy model is trained on the α-weighted loss Σ α_i L_i: the weights move the loss,
as they do in the paper's proxy training, and live in the weighting state, so a resumed run
continues them exactly. Here λ_i = N α_i (summing to N, as equal weights do), the excess is
each task's mean loss in this step's batch over its reference loss `reference[i]` (a
constant: e.g. the untrained base model's evaluation loss on the task, which the main job
passes for a text run whose config leaves `reference` empty), and the step's weights are the
α of the steps before it. With `every` > 1, α moves only every that many steps, on the
mean excess since its last move. Differences from the paper: its excess is a mean over the
tokens of each domain of max(ℓ − ℓ_ref, 0) per token, with a reference model run on the
same batch; here the clip is on the task's mean loss against one reference number.

An absent task's weight is 0 and its excess counts as 0 at that step.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import Method, Needs, StepInfo, compute_dtype


class DoReMiState(NamedTuple):
  rates: jax.Array  # α (N,), on the simplex
  excess: jax.Array  # (N,) summed excess losses since the last move of α
  count: jax.Array  # int32, steps summed in `excess`


def rates_update(rates: jax.Array, excess: jax.Array, step_size: float, smoothing: float
                 ) -> jax.Array:
  """One move of α (the module docstring's update)."""
  logits = jnp.log(rates) + step_size * excess
  moved = jax.nn.softmax(logits)
  return (1 - smoothing) * moved + smoothing / rates.shape[0]


def doremi(reference: tuple[float, ...] = (), step_size: float = 1.0, smoothing: float = 1e-3,
           every: int = 1) -> Method:
  if step_size <= 0 or not 0 <= smoothing <= 1 or every < 1:
    raise ValueError(f'doremi: needs step_size > 0, smoothing in [0, 1] and every >= 1, got '
                     f'{step_size}, {smoothing}, {every}.')

  def init(num_tasks):
    if reference and len(reference) != num_tasks:
      raise ValueError(f'doremi: reference has {len(reference)} losses for {num_tasks} tasks.')
    return DoReMiState(jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32),
                       jnp.zeros((num_tasks,), jnp.float32), jnp.zeros((), jnp.int32))

  def update(info: StepInfo, state: DoReMiState):
    rates, total, count = state
    ref = jnp.asarray(reference or (0.0,) * rates.shape[0], jnp.float32)
    excess = jnp.where(info.present, jnp.maximum(info.losses.astype(jnp.float32) - ref, 0.0),
                       0.0)
    total, count = total + excess, count + 1
    due = count >= every
    moved = rates_update(rates, total / count, step_size, smoothing)
    weights = jnp.where(info.present, rates.shape[0] * rates, 0.0).astype(
        compute_dtype(info.losses))
    return weights, DoReMiState(jnp.where(due, moved, rates), jnp.where(due, 0.0, total),
                                jnp.where(due, 0, count))

  return Method(init, update, Needs.LOSSES)
