"""The adversarial term of the joint objective: a task discriminator on the shared features.

The discriminator D learns which task's dataset a row came from, minimising L_adv, its
cross-entropy. The shared encoder plays against it (Liu, Qiu & Huang 2017, ASP-MTL):
  'reverse'  maximise L_adv: the objective's −λ_adv L_adv term (Ganin & Lempitsky 2015);
  'entropy'  minimise λ_adv CE(uniform, D): push D's prediction toward uniform, which keeps
             the encoder's gradient from vanishing once D is confident.
Two ways to optimise the min-max: a gradient reversal layer (one pass), or alternating
updates of D and of the model. The adversary is an objective term (mtl_jax.objectives.terms):
D's parameters and optimizer state live in TrainState.terms['adversary'], not in the model.
"""

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtl_jax.models.base import ModelOutput
from mtl_jax.objectives.terms import TermValue

LOSSES = ('reverse', 'entropy')
OPTIMIZATIONS = ('reversal', 'alternating')
SCHEDULES = ('constant', 'ganin')


NAME = 'adversary'  # its key in TrainState.terms


class Discriminator(nn.Module):
  """The adversary of ASP-MTL (Liu, Qiu & Huang 2017): which task's dataset a row is from."""
  num_domains: int
  hidden: int = 0

  @nn.compact
  def __call__(self, shared: jax.Array) -> jax.Array:
    x = shared
    if self.hidden:
      x = jnp.tanh(nn.Dense(self.hidden, name='hidden')(x))
    return nn.Dense(self.num_domains, name='logits')(x)


class _Holder(nn.Module):
  """D as a submodule named 'discriminator', so that its parameters initialise as they did
  when D was part of the multi-task model."""
  num_domains: int
  hidden: int

  def setup(self):
    self.discriminator = Discriminator(self.num_domains, self.hidden)

  def __call__(self, shared: jax.Array) -> jax.Array:
    return self.discriminator(shared)


class Adversary(NamedTuple):
  """The adversarial objective term (mtl_jax.objectives.terms.Term): `loss` in LOSSES,
  `optimization` in OPTIMIZATIONS, `weight(step)` the λ_adv schedule, the discriminator's
  own optimizer, its classes (the run's training datasets) and hidden width (0: linear).
  It reads ModelOutput.shared and the batch's 'domain' (each row's home dataset)."""
  loss: str
  optimization: str
  weight: Callable[[jax.Array], jax.Array]
  optimizer: optax.GradientTransformation
  num_domains: int
  hidden: int = 0

  @property
  def _module(self) -> nn.Module:
    return _Holder(self.num_domains, self.hidden)

  def init(self, key: jax.Array, output: ModelOutput):
    shared = jnp.zeros(output.shared.shape, output.shared.dtype)
    return self._module.init(key, shared)['params']['discriminator']

  def logits(self, params, shared: jax.Array) -> jax.Array:
    return self._module.apply({'params': {'discriminator': params}}, shared)

  def apply(self, params, output: ModelOutput, batch: dict, step: jax.Array) -> TermValue:
    """The adversary's part of one forward pass. Its `extra` is the scalar whose gradient
    every parameter should get from the adversary: the discriminator its own descent
    direction (in 'reversal'; in 'alternating' it was updated before this pass and is fixed
    here), the encoder the adversarial one. Its `objective` is the adversary's part of the
    reported joint objective: −λ_adv L_adv, or λ_adv CE(uniform, D) for 'entropy'."""
    sg = jax.lax.stop_gradient
    shared, domains, weight = output.shared, batch['domain'], self.weight(step)
    mask = jnp.ones(domains.shape, jnp.float32)
    if self.optimization == 'reversal' and self.loss == 'reverse':
      logits = self.logits(params, reverse_gradient(shared, weight))
      loss = domain_loss(logits, domains, mask)
      term, objective = loss, -weight * loss
    elif self.optimization == 'reversal':  # entropy: D descends L_adv on fixed features
      logits = self.logits(params, sg(shared))
      loss = domain_loss(logits, domains, mask)
      confusion = weight * uniform_loss(self.logits(sg(params), shared), mask)
      term, objective = loss + confusion, confusion
    else:
      logits = self.logits(sg(params), shared)
      loss = domain_loss(logits, domains, mask)
      objective = (-weight * loss if self.loss == 'reverse'
                   else weight * uniform_loss(logits, mask))
      term = objective
    metrics = {'adversary_loss': sg(loss),
               'adversary_accuracy': domain_accuracy(sg(logits), domains, mask),
               'adversary_weight': jnp.asarray(weight, jnp.float32)}
    return TermValue(term, objective, metrics)

  @property
  def first_loss(self):
    """Alternating: D first descends L_adv on the model's (fixed) shared features."""
    if self.optimization != 'alternating':
      return None
    return lambda params, output, batch: domain_loss(
        self.logits(params, output.shared), batch['domain'],
        jnp.ones(batch['domain'].shape, jnp.float32))


@jax.custom_vjp
def reverse_gradient(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity forward; the backward pass returns −scale times the incoming gradient."""
  return x


def _reverse_fwd(x, scale):
  return x, scale


def _reverse_bwd(scale, g):
  return -scale * g, jnp.zeros_like(scale)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def adversary_weight(step: jax.Array, num_steps: int, weight: float, schedule: str,
                     gamma: float = 10.0) -> jax.Array:
  """λ_adv at `step`. 'ganin' ramps it from 0 to `weight` as 2 / (1 + exp(−γ p)) − 1 with
  p = step / num_steps (Ganin & Lempitsky 2015), so the early, random features are not
  attacked at full strength."""
  if schedule == 'constant':
    return jnp.asarray(weight, jnp.float32)
  if schedule == 'ganin':
    progress = jnp.asarray(step, jnp.float32) / num_steps
    return weight * (2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0)
  raise ValueError(f'Unknown adversary schedule {schedule!r}; choose from {SCHEDULES}.')


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.where(mask > 0, values, 0.0).sum() / jnp.maximum(mask.sum(), 1.0)


def domain_loss(logits: jax.Array, domains: jax.Array, mask: jax.Array) -> jax.Array:
  """L_adv: the discriminator's mean cross-entropy over the rows in `mask`."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), domains)
  return _masked_mean(ce, mask)


def uniform_loss(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean cross-entropy between the uniform distribution and the discriminator's."""
  ce = -jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).mean(-1)
  return _masked_mean(ce, mask)


def domain_accuracy(logits: jax.Array, domains: jax.Array, mask: jax.Array) -> jax.Array:
  return _masked_mean((jnp.argmax(logits, -1) == domains).astype(jnp.float32), mask)
