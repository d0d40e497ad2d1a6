"""Terms of the objective besides the tasks' losses, with parameters of their own.

The objective is Σ λ_i L_i + the architecture's penalty + Σ_t (term t). A term plugs into the
train step the way a weighting method does: it brings its parameters (`init`), its own
optimizer, and `apply`, which reads the model's output on a batch. The model's parameters
stay the model's: a term's live in TrainState.terms[name] with their optimizer state, and
the step's routes (mtl_jax.train.gradients) differentiate them beside the model's without
knowing what they are. The adversary's task discriminator is one (mtl_jax.objectives.
adversarial); a regulariser with a learned scale or a distillation loss against a teacher
would be others.

A term is optimised in one of two ways:
- together (`first_loss` None): its parameters take their optimizer's step from the same
  backward pass as the model's, on the gradient of `apply`'s `extra`;
- first (`first_loss` given): before the model's gradient, its parameters descend
  first_loss(params, output, batch) on the model's output with the model fixed; the model
  then plays against the updated, fixed term.
"""

from typing import Any, NamedTuple, Protocol

import flax
import jax
import optax

from mtl_jax.models.base import ModelOutput


class TermValue(NamedTuple):
  """A term on one batch (or one slice of it)."""
  extra: jax.Array  # scalar whose gradient the term contributes, to the model and to itself
  objective: jax.Array  # the term's part of the reported joint objective
  metrics: dict  # scalars to log


class Term(Protocol):
  optimizer: optax.GradientTransformation  # the term's own

  def init(self, key: jax.Array, output: ModelOutput) -> Any:
    """The term's parameters, given the model's output (as shapes)."""

  def apply(self, params, output: ModelOutput, batch: dict, step: jax.Array) -> TermValue:
    """The term on the model's output for `batch` at train step `step`."""

  @property
  def first_loss(self):
    """None, or (params, output, batch) -> the loss the parameters descend first."""


class TermState(flax.struct.PyTreeNode):
  params: Any
  opt_state: optax.OptState


def init_states(terms: dict[str, Term], key: jax.Array, output: ModelOutput
                ) -> dict[str, TermState]:
  """Each term's initial parameters and optimizer state. Term i's key is fold_in(key, i + 1)
  in the order of `terms`."""
  states = {}
  for i, (name, term) in enumerate(terms.items()):
    params = term.init(jax.random.fold_in(key, i + 1), output)
    states[name] = TermState(params, term.optimizer.init(params))
  return states
