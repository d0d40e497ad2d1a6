"""The compiled steps: train_step(state, batch) -> (state, metrics), and predictions."""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtl_jax.objectives.joint import joint_loss
from mtl_jax.objectives.terms import TermState
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train import gradients
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward, apply_model
from mtl_jax.train.state import TrainState
from mtl_jax.weighting import Method, Needs, needs_task_gradients


def choose_route(method: Method, mode: str, diagnostics: bool, grouped: bool,
                 collectives: Collectives = Collectives()) -> gradients.Route:
  """The way of getting the step's gradient (mtl_jax.train.gradients) for a weighting
  method in `mode` ('params' or 'representation'), on batches `grouped` by task or not,
  with the slices' `collectives`. Per-task gradients are taken only when the method or the
  `diagnostics` need them. Refuses what the routes do not support."""
  if collectives.axis_name is not None and (grouped or (mode == 'representation'
                                                        and method.needs is Needs.GRADS)):
    raise ValueError('pmap data parallelism supports neither grouped batches nor GRADS '
                     'methods in representation mode.')
  if not needs_task_gradients(method, diagnostics):
    return gradients.loss_weighted
  if collectives.micro_batches > 1 and (grouped or mode == 'representation'):
    raise ValueError('Gradient accumulation with per-task gradients needs mode \'params\' '
                     'and batches that are not grouped.')
  if mode == 'representation':
    return gradients.representation
  return gradients.grouped if grouped else gradients.task_params


def make_train_step(forward: Forward, route: gradients.Route, method: Method,
                    optimizer: optax.GradientTransformation, learning_rate: optax.Schedule,
                    diagnostics: bool = False) -> Callable:
  """The pure step train_step(state, batch) -> (state, metrics) for a weighting `method`
  (mtl_jax.weighting), getting its gradient by `route` (`choose_route`'s pick).

  `forward` holds the objective: Σ λ_i L_i + the architecture's penalty + the objective
  terms (mtl_jax.objectives.terms; e.g. the adversary's −λ_adv L_adv against a task
  discriminator). Each term's parameters take their own optimizer's step, either first (on
  the model's fixed output) or together with the model's. `diagnostics` adds the per-task
  gradients' norms and cosines to the metrics (the route must take per-task gradients).

  `forward.collectives` says which slice of the batch the step sees. With an axis name the
  step runs per device under jax.pmap on a slice of the global batch. Each task's loss is
  its global masked mean (global sums over global counts); losses, gradients, per-task
  gradients and Gram matrices are summed over devices before the method sees them, so every
  device takes the same update as one device on the whole batch. The adversary's term (a
  mean over rows) and a parameter penalty are averaged over devices; a penalty on batch
  statistics (ModelOutput.statistics, e.g. shared-private's orthogonality) is computed from
  the statistics summed over devices, and each device contributes its exact share of the
  gradient (Forward.statistics_terms).

  With k > 1 micro-batches the batch is split into k, run one after another (lax.scan), and
  their contributions are summed: the same update as the whole batch at about 1/k of the
  activation memory. A term's first update accumulates over them too.
  """
  collectives, num_tasks = forward.collectives, len(forward.tasks)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(state.rng, state.step)
    method_key = jax.random.fold_in(dropout_key, 1 << 30)  # the same on every device
    dropout_key = collectives.device_key(dropout_key)
    term_states = terms_first(forward, state.params, state.terms, batch, dropout_key)
    g = route(forward, method, gradients.Inputs(
        state.params, {name: s.params for name, s in term_states.items()}, batch,
        dropout_key, method_key, state.weighting, state.step))
    grad_norm = optax.global_norm(g.grads)
    grad_norms = jnp.stack([grad_norm] + [optax.global_norm(g.term_grads[name])
                                          for name in term_states])
    nonfinite_tasks, nonfinite = nonfinite_flags(g.losses, grad_norms, g.gram)
    params, opt_state = optimizer_step(optimizer, g.grads, state.opt_state, state.params,
                                       skip=nonfinite)
    term_states = terms_together(forward, term_states, g.term_grads, nonfinite)
    weights = (jnp.full((num_tasks,), jnp.nan) if method.needs is Needs.GRADS
               else jnp.asarray(g.method_output, jnp.float32))
    metrics = {'loss': joint_loss(g.losses, jnp.nan_to_num(weights, nan=1.0), g.objective),
               'task_losses': g.losses, 'task_counts': g.counts, 'task_weights': weights,
               'grad_norm': grad_norm,
               'learning_rate': learning_rate(state.step), **g.metrics}
    if diagnostics:
      metrics.update(gradient_diagnostics(g.gram))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              weighting=g.method_state, terms=term_states)
    new_state = unless_nonfinite(state, new_state, nonfinite)
    metrics.update(nonfinite=nonfinite, nonfinite_tasks=nonfinite_tasks,
                   skipped_steps=new_state.skipped_steps)
    return new_state, metrics

  return train_step


def terms_first(forward: Forward, params, term_states: dict[str, TermState], batch: dict,
                dropout_key: jax.Array) -> dict[str, TermState]:
  """`term_states` after the first update of each term optimised first: one step of its
  optimizer on its `first_loss` of the model's current output (the model is fixed),
  accumulated over the micro-batches."""
  c, states = forward.collectives, dict(term_states)
  for name, term in forward.terms.items():
    if term.first_loss is None:
      continue

    def grads(mb, key, term=term, state=states[name]):
      output = jax.lax.stop_gradient(apply_model(forward.model, params, mb, key))
      return jax.grad(lambda p: c.share(term.first_loss(p, output, mb)))(state.params)

    total = c.total(gradients.accumulate(grads, batch, dropout_key, c.micro_batches))
    states[name] = TermState(*apply_optimizer(term.optimizer, total, states[name].opt_state,
                                              states[name].params))
  return states


def terms_together(forward: Forward, term_states: dict[str, TermState], term_grads: dict,
                   skip: jax.Array) -> dict[str, TermState]:
  """`term_states` after the update of each term optimised together with the model, from
  the gradient of its part of the objective (no update when `skip`)."""
  states = dict(term_states)
  for name, term in forward.terms.items():
    if term.first_loss is None:
      states[name] = TermState(*optimizer_step(term.optimizer, term_grads[name],
                                               states[name].opt_state, states[name].params,
                                               skip))
  return states


def nonfinite_flags(losses: jax.Array, grad_norms: jax.Array, gram: jax.Array | None
                    ) -> tuple[jax.Array, jax.Array]:
  """(which tasks are non-finite (N,), whether the step is). The tasks whose loss is NaN or
  Inf; when every loss is finite and the step has per-task gradients, those whose gradient's
  squared norm (the Gram diagonal) is not. (A NaN loss makes every task's VJP NaN, as its
  zero cotangent times NaN is NaN: only the losses name the culprit then.) The step is
  non-finite when a task is or a combined gradient is (a loss weighter's gradient, the
  penalty's and the adversary's terms are not per task): read from the global norms the step
  computes anyway (`grad_norms`: the model's, and each objective term's), which are
  non-finite exactly when an entry is (or when the squared norm overflows float32)."""
  tasks = ~jnp.isfinite(losses)
  if gram is not None:
    tasks = jnp.where(tasks.any(), tasks, ~jnp.isfinite(jnp.diag(gram)))
  return tasks, tasks.any() | ~jnp.isfinite(grad_norms).all()


def apply_optimizer(optimizer: optax.GradientTransformation, grads, opt_state, params):
  """(params, opt_state) after one update by `optimizer`."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def optimizer_step(optimizer: optax.GradientTransformation, grads, opt_state, params,
                   skip: jax.Array):
  """apply_optimizer, or (params, opt_state) unchanged when `skip`. A lax.cond rather than a
  select of old and new values: the select kept both optimizer states alive (+1.24 GiB of
  step temporaries for bert_large on one device, docs/faults.md)."""
  return jax.lax.cond(skip, lambda grads, opt_state, params: (params, opt_state),
                      functools.partial(apply_optimizer, optimizer), grads, opt_state, params)


def unless_nonfinite(state: TrainState, new_state: TrainState, nonfinite: jax.Array
                     ) -> TrainState:
  """new_state; after a non-finite step, the old weighting state and objective terms
  (small; a term optimised first is updated before the step knows), with the step counter
  advanced (the next step takes the next batch and dropout key) and the skip counted. The
  model's parameters and optimizer state are kept by optimizer_step."""
  keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(nonfinite, o, n), old, new)
  return new_state.replace(
      weighting=keep(state.weighting, new_state.weighting),
      terms=keep(state.terms, new_state.terms),
      skipped_steps=state.skipped_steps + nonfinite.astype(jnp.int32))


def gradient_diagnostics(gram: jax.Array) -> dict:
  """Per-task gradient norms and the pairwise cosine matrix (the gradient-conflict matrix)."""
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  cosine = gram / jnp.maximum(jnp.outer(norms, norms), 1e-30)
  return {'task_grad_norms': norms, 'task_grad_cosine': cosine}


def make_predict_step(model: nn.Module, tasks: Sequence[Task]) -> Callable:
  """(params, batch) -> {task: class ids (B,) / tag ids (B, S) / values (B,)}; a regression
  value in its targets' units (Task.target_scale undone)."""
  tasks = tuple(tasks)

  def prediction(task: Task, output: jax.Array) -> jax.Array:
    if task.kind is not TaskKind.REGRESSION:
      return jnp.argmax(output, axis=-1)
    if task.target_scale is None:
      return output
    mean, std = task.target_scale
    return mean + std * output

  def predict_step(params, batch: dict) -> dict:
    outputs = apply_model(model, params, batch).tasks
    return {t.name: prediction(t, outputs[t.name]) for t in tasks}

  return predict_step
