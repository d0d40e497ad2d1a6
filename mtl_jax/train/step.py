"""The compiled steps: train_step(state, batch) -> (state, metrics), and predictions."""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.models.base import ModelOutput
from mtl_jax.objectives.adversarial import Adversary, adversarial_terms, domain_loss
from mtl_jax.objectives.joint import joint_loss
from mtl_jax.objectives.losses import label_counts, loss_vector
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.state import TrainState
from mtl_jax.weighting import (Method, Needs, StepInfo, combine, gram_matrix, head_weights,
                               needs_task_gradients)

DISCRIMINATOR = 'discriminator'  # its parameters have their own optimizer (adversarial MTL)


def apply_model(model: nn.Module, params, batch: dict, dropout_key=None, method=None,
                inputs=None):
  """Runs the model (or one of its methods) on the batch; dropout is on iff a key is given."""
  rngs = None if dropout_key is None else {'dropout': dropout_key}
  args = tuple(batch[k] for k in INPUT_KEYS) if inputs is None else inputs
  return model.apply({'params': params}, *args, deterministic=dropout_key is None,
                     rngs=rngs, method=method)


def task_gradient_like(model: nn.Module, params, mode: str, batch_size: int, seq_len: int):
  """Shapes of one task's gradient: the shared parameters, or the shared representation."""
  shared = {k: v for k, v in params.items() if k in model.shared_params}
  if mode == 'params':
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), shared)
  ids = model.example_inputs(batch_size, seq_len)
  representation = jax.eval_shape(
      lambda s, *inputs: apply_model(model, s, {}, method='encode_batch', inputs=inputs),
      shared, ids, ids, ids)
  return Representation.split(representation).floats


class Representation(NamedTuple):
  """A representation split into the float arrays that gradients are taken with respect to,
  and the rest (an architecture may pass e.g. the attention mask on to decode)."""
  floats: list
  others: list
  is_float: tuple[bool, ...]
  treedef: Any

  @classmethod
  def split(cls, representation) -> 'Representation':
    leaves, treedef = jax.tree.flatten(representation)
    is_float = tuple(jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves)
    return cls([x for x, f in zip(leaves, is_float) if f],
               [x for x, f in zip(leaves, is_float) if not f], is_float, treedef)

  def merge(self, floats: list, others: list | None = None):
    """The representation with `floats` in place (`others` defaults to the split's own)."""
    floats, others = iter(floats), iter(self.others if others is None else others)
    return self.treedef.unflatten([next(floats) if f else next(others) for f in self.is_float])

  def cotangent(self, float_grads: list):
    """A cotangent of the whole representation: zero (float0) for the non-float arrays."""
    return self.merge(float_grads, [np.zeros(x.shape, jax.dtypes.float0) for x in self.others])


def _second(terms):
  """((losses, extra), aux) -> (extra, aux)."""
  (_, extra), aux = terms
  return extra, aux


def split_discriminator(params) -> tuple[dict, dict | None]:
  """(the parameters the main optimizer updates, the discriminator's or None)."""
  return ({k: v for k, v in params.items() if k != DISCRIMINATOR},
          params.get(DISCRIMINATOR))


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    tasks: Sequence[Task], method: Method, learning_rate: optax.Schedule,
                    mode: str = 'params', diagnostics: bool = False,
                    grouped: bool = False, adversary: Adversary | None = None,
                    axis_name: str | None = None, micro_batches: int = 1) -> Callable:
  """Builds the pure step for a weighting `method` (mtl_jax.weighting).

  The objective is Σ λ_i L_i + the architecture's penalty − λ_adv L_adv (an `adversary`
  plays against a task discriminator; mtl_jax.objectives.adversarial).

  The step computes what the method needs and nothing more. A loss weighter costs one
  forward and one backward pass. Per-task gradients (GRAM and GRADS methods, or
  `diagnostics`) are taken with respect to the shared parameters (mode 'params') or the
  shared representation (mode 'representation', then one backward through the encoder).
  They come from one forward pass and a VJP vmapped over the N tasks (N backward passes
  through the encoder), except in mode 'params' on `grouped` batches (each row labelled for
  one task, N equal groups in task order), where one backward pass yields all of them.
  Heads get ∇L_i. The penalty and the adversary are not tasks: their gradient is added to
  the method's update (one more backward pass when a per-task method has them).

  With `axis_name` the step runs per device under jax.pmap on a slice of the global batch.
  Each task's loss is its global masked mean (global sums over global counts); losses,
  gradients, per-task gradients and Gram matrices are summed over devices before the method
  sees them, so every device takes the same update as one device on the whole batch. The
  adversary's term (a mean over rows) and a parameter penalty are averaged over devices; a
  penalty on batch statistics (ModelOutput.statistics, e.g. shared-private's
  orthogonality) is computed from the statistics summed over devices, and each device
  contributes its exact share of the gradient (statistics_terms). Not supported there:
  `grouped` batches, and GRADS methods in mode 'representation' (their per-example
  gradients would need gathering).

  With `micro_batches` = k > 1 the batch is split into k micro-batches, run one after another
  (lax.scan), and their contributions are summed: the same update as the whole batch at
  about 1/k of the activation memory. A loss weighter then needs the losses before its
  backward passes, so it runs the k forward passes twice; so does a per-task method for a
  penalty on batch statistics, which needs the whole batch's first. Per-task methods
  accumulate the per-task gradients (mode 'params' only, not on grouped batches). The
  alternating adversary's discriminator update accumulates over the micro-batches too.
  """
  if axis_name is not None and (grouped or (mode == 'representation'
                                            and method.needs is Needs.GRADS)):
    raise ValueError('pmap data parallelism supports neither grouped batches nor GRADS '
                     'methods in representation mode.')
  per_task = needs_task_gradients(method, diagnostics)
  if micro_batches > 1 and per_task and (grouped or mode == 'representation'):
    raise ValueError('Gradient accumulation with per-task gradients needs mode \'params\' '
                     'and batches that are not grouped.')
  tasks = tuple(tasks)
  num_tasks = len(tasks)
  shared_keys = model.shared_params
  has_extra = adversary is not None or model.regularized

  def total(x):
    """Sums over the devices of a pmapped step (the identity on one device)."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  def average(x):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)

  def slice_share(x):
    """A whole-batch mean's share on this device and micro-batch: its `total`, summed over
    the micro-batches, is the mean (the slices are equal in size)."""
    devices = 1 if axis_name is None else jax.lax.psum(1, axis_name)
    return x / (devices * micro_batches)

  def over_batch(fn, batch, dropout_key):
    """Σ over the micro-batches of fn(micro_batch, dropout_key): fn(batch, dropout_key) for
    one micro-batch, else a lax.scan with a dropout key per micro-batch."""
    if micro_batches == 1:
      return fn(batch, dropout_key)
    micro = jax.tree.map(lambda x: x.reshape((micro_batches, -1) + x.shape[1:]), batch)
    keys = jax.vmap(lambda m: jax.random.fold_in(dropout_key, m))(jnp.arange(micro_batches))
    first = jax.tree.map(lambda x: x[0], (micro, keys))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(fn, *first))
    body = lambda acc, xs: (jax.tree.map(jnp.add, acc, fn(*xs)), None)
    return jax.lax.scan(body, zeros, (micro, keys))[0]

  def split(params):
    return ({k: v for k, v in params.items() if k in shared_keys},
            {k: v for k, v in params.items() if k not in shared_keys})

  def info_for(losses, counts, key, step, gram=None, grads=None):
    return StepInfo(jax.lax.stop_gradient(losses), counts > 0, key, step, gram, grads)

  def shared_update(out, task_grads):
    """The method's output as one gradient over the tasks' gradients."""
    return out if method.needs is Needs.GRADS else combine(out, task_grads)

  def head_update(out, head_grads, info, method_state):
    """Heads get λ_i ∇L_i from a loss weighter, else the method's head weights (default 1)."""
    if method.needs is Needs.LOSSES:
      return combine(out, head_grads)
    return combine(head_weights(method, info, method_state), head_grads)

  def discriminate(disc_params, shared):
    return apply_model(model, {DISCRIMINATOR: disc_params}, {}, method='discriminate',
                       inputs=(shared,))

  def task_losses(output: ModelOutput, batch, counts):
    """The slice's shares of the batch's masked means (N,), given the batch's label counts."""
    return loss_vector(tasks, output.tasks, batch['labels'], batch['label_masks'], counts)[0]

  def statistics_terms(statistics, whole):
    """(penalty, surrogate) of the model's `statistics_penalty` g on a slice of the batch with
    batch statistics `statistics`. `whole` holds the whole batch's, or is None on one
    micro-batch: the slice's totalled over the devices (stop_gradient first, so no gradient
    is taken through the psum). g is no sum over rows, so a slice has no share of it, but its
    gradient is linear in the statistics': ∇g(C) = Σ_s ⟨∇g(C), ∇C_s⟩ for C = Σ_s C_s. So
    the surrogate ⟨sg(∇g(C)), C_s⟩, summed over the slices, has the gradient of g (its value
    means nothing)."""
    if whole is None:
      whole = total(jax.lax.stop_gradient(statistics))
    penalty, slope = jax.value_and_grad(model.statistics_penalty)(whole)
    surrogate = sum(jnp.sum(g * c) for g, c in zip(jax.tree.leaves(slope),
                                                   jax.tree.leaves(statistics)))
    return penalty, surrogate

  def terms(output: ModelOutput, params, batch, adversary_weight, counts, whole=None):
    """(losses (N,), extra), (objective's extra, metrics) of one model output on a slice of
    the batch whose label counts are `counts` (and statistics `whole`, see
    statistics_terms): the losses are the slice's shares of the batch's masked means, and
    the extra is the scalar whose gradient the non-task terms contribute. Summed over
    slices, all of them are the whole batch's."""
    losses = task_losses(output, batch, counts)
    extra = objective = output.penalty
    surrogate = jnp.zeros((), jnp.float32)
    if model.has_statistics:
      penalty, surrogate = statistics_terms(output.statistics, whole)
      objective = objective + penalty
    metrics = {'penalty': jax.lax.stop_gradient(objective)} if model.regularized else {}
    if adversary is not None:
      term, adv_objective, adv_metrics = adversarial_terms(
          adversary, discriminate, params[DISCRIMINATOR], output.shared, batch['domain'],
          adversary_weight)
      extra, objective = extra + term, objective + adv_objective
      metrics.update(adv_metrics)
    objective = total(slice_share(jax.lax.stop_gradient(objective)))
    metrics = jax.tree.map(lambda m: average(m) / micro_batches, metrics)
    return (losses, slice_share(extra) + surrogate), (objective, metrics)

  def with_extra(vjp):
    """The VJP's per-task gradients (vmapped over one-hot cotangents of the losses), and
    the extra term's gradient (None when the model has no extra term)."""
    zero = jnp.zeros((), jnp.float32)
    task_grads = jax.vmap(lambda c: vjp((c, zero)))(jnp.eye(num_tasks, dtype=jnp.float32))
    extra_grads = (vjp((jnp.zeros((num_tasks,), jnp.float32), jnp.ones((), jnp.float32)))
                   if has_extra else None)
    return task_grads, extra_grads

  def add(grads, extra_grads):
    return grads if extra_grads is None else jax.tree.map(jnp.add, grads, extra_grads)

  def grouped_task_gradients(params, batch, dropout_key):
    """Per-task gradients from ONE backward pass, for a batch of N equal groups of rows where
    group i holds task i's rows only (sampling strategy 'grouped').

    Each group runs on its own copy of the parameters (vmapped; the matmuls keep their total
    FLOPs), so the gradient with respect to copy i is ∇L_i.
    """
    groups = jax.tree.map(lambda x: x.reshape((num_tasks, -1) + x.shape[1:]), batch)
    copies = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_tasks,) + p.shape), params)

    def group_loss(p, group, i):
      outputs = apply_model(model, p, group, jax.random.fold_in(dropout_key, i)).tasks
      losses, counts = loss_vector(tasks, outputs, group['labels'], group['label_masks'])
      return losses[i], counts[i]

    losses, vjp, _ = jax.vjp(
        lambda c: jax.vmap(group_loss)(c, groups, jnp.arange(num_tasks)), copies, has_aux=True)
    return losses, vjp(jnp.ones((num_tasks,), jnp.float32))[0]

  def gradients(params, batch, dropout_key, method_key, method_state, step, adversary_weight):
    """(grads, losses, counts, method output, method state, gram or None, aux of terms)."""
    counts = total(label_counts(tasks, batch['label_masks']))
    one = jnp.ones((), jnp.float32)

    def first_pass(mb, key):
      """A micro-batch's forward pass for what its backward pass needs from every
      micro-batch: its shares of the losses (a loss weighter's input) and its statistics."""
      output = apply_model(model, params, mb, key)
      return task_losses(output, mb, counts), output.statistics

    losses = whole = None  # with micro-batches, the first pass's (when needed)
    if micro_batches > 1 and (model.has_statistics or not per_task):
      losses, whole = over_batch(first_pass, batch, dropout_key)
      whole = None if whole is None else total(whole)

    def forward(p, mb, key):
      return terms(apply_model(model, p, mb, key), p, mb, adversary_weight, counts, whole)

    def backward(cotangent, mb, key):
      """(the gradient for `cotangent` of forward's (losses, extra) on `mb`, its aux)."""
      _, vjp, aux = jax.vjp(lambda p: forward(p, mb, key), params, has_aux=True)
      return vjp(cotangent)[0], aux

    if not per_task:
      if micro_batches == 1:
        (losses, _), vjp, aux = jax.vjp(lambda p: forward(p, batch, dropout_key), params,
                                        has_aux=True)
        backward = lambda cotangent, *_: (vjp(cotangent)[0], aux)  # of the pass just run
      losses = total(losses)
      weights, method_state = method.update(info_for(losses, counts, method_key, step),
                                            method_state)
      grads, aux = over_batch(lambda mb, key: backward((weights, one), mb, key), batch,
                              dropout_key)
      return total(grads), losses, counts, weights, method_state, None, aux

    if mode == 'params':
      if grouped:
        losses, task_grads = grouped_task_gradients(params, batch, dropout_key)
        extra_grads, aux = None, (jnp.zeros(()), {})
        if has_extra:  # one more forward and backward pass, over the whole batch
          extra_grads, aux = jax.grad(lambda p: _second(forward(p, batch, dropout_key)),
                                      has_aux=True)(params)
      else:
        def task_terms(mb, key):
          (losses, _), vjp, aux = jax.vjp(lambda p: forward(p, mb, key), params, has_aux=True)
          (task_grads,), extra_grads = with_extra(vjp)
          return losses, task_grads, extra_grads, aux

        losses, task_grads, extra_grads, aux = over_batch(task_terms, batch, dropout_key)
        losses, task_grads, extra_grads = total((losses, task_grads, extra_grads))
        extra_grads = None if extra_grads is None else extra_grads[0]
      shared_grads, head_grads = split(task_grads)
      gram = gram_matrix(shared_grads)
      info = info_for(losses, counts, method_key, step, gram, shared_grads)
      out, new_state = method.update(info, method_state)
      grads = {**shared_update(out, shared_grads),
               **head_update(out, head_grads, info, method_state)}
      return add(grads, extra_grads), losses, counts, out, new_state, gram, aux

    shared, heads = split(params)
    representation, encoder_vjp = jax.vjp(
        lambda s: apply_model(model, s, batch, dropout_key, method='encode_batch'), shared)
    representation = Representation.split(representation)

    def decode(f, h):
      output = apply_model(model, h, batch, dropout_key, method='decode_batch',
                           inputs=(representation.merge(f),))
      return terms(output, h, batch, adversary_weight, counts)

    (losses, _), vjp, aux = jax.vjp(decode, representation.floats, heads, has_aux=True)
    losses = total(losses)
    # Feature gradients stay per device (each device holds its own rows' features); their
    # Gram matrix, and the heads' gradients, are global.
    (feature_grads, head_grads), extra_grads = with_extra(vjp)
    head_grads = total(head_grads)
    gram = total(gram_matrix(feature_grads))
    info = info_for(losses, counts, method_key, step, gram, feature_grads)
    out, new_state = method.update(info, method_state)
    feature_update = shared_update(out, feature_grads)
    heads_update = head_update(out, head_grads, info, method_state)
    if extra_grads is not None:
      feature_update = add(feature_update, extra_grads[0])
      heads_update = add(heads_update, total(extra_grads[1]))
    grads = {**total(encoder_vjp(representation.cotangent(feature_update))[0]), **heads_update}
    return grads, losses, counts, out, new_state, gram, aux

  def discriminator_step(params, batch, dropout_key, disc_opt_state):
    """Alternating optimisation, first half: one update of the discriminator on the
    current shared features (the model is fixed), accumulated over the micro-batches."""
    disc_params = params[DISCRIMINATOR]

    def disc_grads(mb, key):
      shared = jax.lax.stop_gradient(apply_model(model, params, mb, key).shared)
      mask = jnp.ones(mb['domain'].shape, jnp.float32)
      return jax.grad(lambda d: slice_share(
          domain_loss(discriminate(d, shared), mb['domain'], mask)))(disc_params)

    grads = total(over_batch(disc_grads, batch, dropout_key))
    disc_params, disc_opt_state = apply_optimizer(adversary.optimizer, grads, disc_opt_state,
                                                  disc_params)
    return {**params, DISCRIMINATOR: disc_params}, disc_opt_state

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(state.rng, state.step)
    method_key = jax.random.fold_in(dropout_key, 1 << 30)  # the same on every device
    if axis_name is not None:  # each device's rows get their own dropout
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    adversary_weight = (jnp.zeros((), jnp.float32) if adversary is None
                        else adversary.weight(state.step))
    params, disc_opt_state = state.params, state.adversary_opt_state
    if adversary is not None and adversary.optimization == 'alternating':
      params, disc_opt_state = discriminator_step(params, batch, dropout_key, disc_opt_state)
    grads, losses, counts, out, method_state, gram, (objective, term_metrics) = gradients(
        params, batch, dropout_key, method_key, state.weighting, state.step, adversary_weight)
    model_params, disc_params = split_discriminator(params)
    model_grads, disc_grads = split_discriminator(grads)
    grad_norm = optax.global_norm(model_grads)
    grad_norms = jnp.stack([grad_norm] + ([] if disc_grads is None
                                          else [optax.global_norm(disc_grads)]))
    nonfinite_tasks, nonfinite = nonfinite_flags(losses, grad_norms, gram)
    params, opt_state = optimizer_step(optimizer, model_grads, state.opt_state, model_params,
                                       skip=nonfinite)
    if adversary is not None:
      if adversary.optimization == 'reversal':
        disc_params, disc_opt_state = optimizer_step(adversary.optimizer, disc_grads,
                                                     disc_opt_state, disc_params, nonfinite)
      params = {**params, DISCRIMINATOR: disc_params}
    weights = (jnp.full((num_tasks,), jnp.nan) if method.needs is Needs.GRADS
               else jnp.asarray(out, jnp.float32))
    metrics = {'loss': joint_loss(losses, jnp.nan_to_num(weights, nan=1.0), objective),
               'task_losses': losses, 'task_counts': counts, 'task_weights': weights,
               'grad_norm': grad_norm,
               'learning_rate': learning_rate(state.step), **term_metrics}
    if diagnostics:
      metrics.update(gradient_diagnostics(gram))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              weighting=method_state, adversary_opt_state=disc_opt_state)
    new_state = unless_nonfinite(state, new_state, nonfinite)
    metrics.update(nonfinite=nonfinite, nonfinite_tasks=nonfinite_tasks,
                   skipped_steps=new_state.skipped_steps)
    return new_state, metrics

  return train_step


def nonfinite_flags(losses: jax.Array, grad_norms: jax.Array, gram: jax.Array | None
                    ) -> tuple[jax.Array, jax.Array]:
  """(which tasks are non-finite (N,), whether the step is). The tasks whose loss is NaN or
  Inf; when every loss is finite and the step has per-task gradients, those whose gradient's
  squared norm (the Gram diagonal) is not. (A NaN loss makes every task's VJP NaN, as its
  zero cotangent times NaN is NaN: only the losses name the culprit then.) The step is
  non-finite when a task is or a combined gradient is (a loss weighter's gradient, the
  penalty's and the adversary's terms are not per task): read from the global norms the step
  computes anyway (`grad_norms`: the model's, and the discriminator's if any), which are
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
  """new_state; after a non-finite step, the old weighting state, discriminator and its
  optimizer state (small; the alternating adversary updates the discriminator before the
  step knows), with the step counter advanced (the next step takes the next batch and
  dropout key) and the skip counted. The model's parameters and optimizer state are kept by
  optimizer_step."""
  keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(nonfinite, o, n), old, new)
  params = new_state.params
  if DISCRIMINATOR in params:
    params = {**params, DISCRIMINATOR: keep(state.params[DISCRIMINATOR],
                                            params[DISCRIMINATOR])}
  return new_state.replace(
      params=params, weighting=keep(state.weighting, new_state.weighting),
      adversary_opt_state=keep(state.adversary_opt_state, new_state.adversary_opt_state),
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
