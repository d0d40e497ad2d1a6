"""One forward pass of the objective on a slice of the batch.

The objective is Σ λ_i L_i + the architecture's penalty + the objective terms
(mtl_jax.objectives.terms, e.g. the adversary's −λ_adv L_adv). A forward pass yields the
task losses (N,), which a weighting method turns into λ or into per-task gradients, and one
scalar `extra`: the sum of the other terms, whose gradient is added to the method's update.
On a slice (a device's rows, a micro-batch) each value is the slice's share, so that summed
over the slices it is the whole batch's (mtl_jax.train.collectives).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.base import ModelOutput
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.objectives.terms import Term
from mtl_jax.tasks import Task
from mtl_jax.train.collectives import Collectives


def apply_model(model: nn.Module, params, batch: dict, dropout_key=None, method=None,
                inputs=None):
  """Runs the model (or one of its methods) on the batch; dropout is on iff a key is given."""
  rngs = None if dropout_key is None else {'dropout': dropout_key}
  args = tuple(batch[k] for k in model.input_keys) if inputs is None else inputs
  return model.apply({'params': params}, *args, deterministic=dropout_key is None,
                     rngs=rngs, method=method)


class Terms(NamedTuple):
  """A forward pass's differentiable outputs, and what it reports."""
  losses: jax.Array  # (N,) the slice's shares of the batch's task losses
  extra: jax.Array  # scalar: its gradient is the non-task terms' (penalty, objective terms)
  objective: jax.Array  # the non-task terms' part of the reported objective (whole batch)
  metrics: dict  # the penalty's and the objective terms' metrics (averaged over slices)


class Forward(NamedTuple):
  """The model, its tasks, the objective terms by name, and the slices' collectives."""
  model: nn.Module
  tasks: tuple[Task, ...]
  terms: dict[str, Term]
  collectives: Collectives

  @property
  def has_extra(self) -> bool:
    """Whether a term besides the tasks' losses has a gradient."""
    return bool(self.terms) or self.model.regularized

  def task_losses(self, output: ModelOutput, batch: dict, counts: jax.Array) -> jax.Array:
    """The slice's shares of the batch's masked means (N,), given the batch's label counts."""
    return loss_vector(self.tasks, output.tasks, batch['labels'], batch['label_masks'],
                       counts)[0]

  def statistics_terms(self, statistics, whole) -> tuple[jax.Array, jax.Array]:
    """(penalty, surrogate) of the model's `statistics_penalty` g on a slice of the batch
    with batch statistics `statistics`. `whole` holds the whole batch's, or is None on one
    micro-batch: the slice's totalled over the devices (stop_gradient first, so no gradient
    is taken through the psum). g is no sum over rows, so a slice has no share of it, but
    its gradient is linear in the statistics': ∇g(C) = Σ_s ⟨∇g(C), ∇C_s⟩ for C = Σ_s C_s.
    So the surrogate ⟨sg(∇g(C)), C_s⟩, summed over the slices, has the gradient of g (its
    value means nothing)."""
    if whole is None:
      whole = self.collectives.total(jax.lax.stop_gradient(statistics))
    penalty, slope = jax.value_and_grad(self.model.statistics_penalty)(whole)
    surrogate = sum(jnp.sum(g * c) for g, c in zip(jax.tree.leaves(slope),
                                                   jax.tree.leaves(statistics)))
    return penalty, surrogate

  def of_output(self, output: ModelOutput, term_params: dict, batch: dict, step: jax.Array,
                counts: jax.Array, whole: Any = None) -> Terms:
    """The Terms of one model output on a slice of the batch whose label counts are `counts`
    (and statistics `whole`, see statistics_terms), with the objective terms' parameters."""
    c = self.collectives
    losses = self.task_losses(output, batch, counts)
    extra = objective = output.penalty
    surrogate = jnp.zeros((), jnp.float32)
    if self.model.has_statistics:
      penalty, surrogate = self.statistics_terms(output.statistics, whole)
      objective = objective + penalty
    metrics = {'penalty': jax.lax.stop_gradient(objective)} if self.model.regularized else {}
    for name, term in self.terms.items():
      value = term.apply(term_params[name], output, batch, step)
      extra, objective = extra + value.extra, objective + value.objective
      metrics.update(value.metrics)
    objective = c.total(c.share(jax.lax.stop_gradient(objective)))
    metrics = jax.tree.map(lambda m: c.average(m) / c.micro_batches, metrics)
    return Terms(losses, c.share(extra) + surrogate, objective, metrics)

  def __call__(self, params, term_params: dict, batch: dict, dropout_key, step: jax.Array,
               counts: jax.Array, whole: Any = None) -> Terms:
    """The Terms of the model with `params` on `batch`."""
    output = apply_model(self.model, params, batch, dropout_key)
    return self.of_output(output, term_params, batch, step, counts, whole)
