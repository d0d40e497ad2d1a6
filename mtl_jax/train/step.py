"""The compiled steps: train_step(state, batch) -> (state, metrics), and predictions."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtl_jax.objectives.joint import joint_loss
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.state import TrainState
from mtl_jax.weighting import Method, Needs, StepInfo, combine, gram_matrix, head_weights

INPUT_KEYS = ('input_ids', 'segment_ids', 'attention_mask')


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
  ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
  return jax.eval_shape(lambda s, *inputs: apply_model(model, s, {}, method='encode',
                                                       inputs=inputs), shared, ids, ids, ids)


def _task_gradients(vjp, num_tasks: int):
  """Per-task gradients of every VJP input, from one forward pass: the VJP vmapped over
  one-hot cotangents of the loss vector."""
  return jax.vmap(vjp)(jnp.eye(num_tasks, dtype=jnp.float32))


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    tasks: Sequence[Task], method: Method, learning_rate: optax.Schedule,
                    mode: str = 'params', diagnostics: bool = False,
                    grouped: bool = False) -> Callable:
  """Builds the pure step for a weighting `method` (mtl_jax.weighting).

  The step computes what the method needs and nothing more. A loss weighter costs one
  forward and one backward pass. Per-task gradients (GRAM and GRADS methods, or
  `diagnostics`) are taken with respect to the shared parameters (mode 'params') or the
  shared representation (mode 'representation', then one backward through the encoder).
  They come from one forward pass and a VJP vmapped over the N tasks (N backward passes
  through the encoder), except in mode 'params' on `grouped` batches (each row labelled for
  one task, N equal groups in task order), where one backward pass yields all of them.
  Heads get ∇L_i.
  """
  tasks = tuple(tasks)
  num_tasks = len(tasks)
  shared_keys = model.shared_params
  per_task = method.needs is not Needs.LOSSES or diagnostics

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

  def grouped_task_gradients(params, batch, dropout_key):
    """Per-task gradients from ONE backward pass, for a batch of N equal groups of rows where
    group i holds task i's rows only (sampling strategy 'grouped').

    Each group runs on its own copy of the parameters (vmapped; the matmuls keep their total
    FLOPs), so the gradient with respect to copy i is ∇L_i.
    """
    groups = jax.tree.map(lambda x: x.reshape((num_tasks, -1) + x.shape[1:]), batch)
    copies = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_tasks,) + p.shape), params)

    def group_loss(p, group, i):
      outputs = apply_model(model, p, group, jax.random.fold_in(dropout_key, i))
      losses, counts = loss_vector(tasks, outputs, group['labels'], group['label_masks'])
      return losses[i], counts[i]

    losses, vjp, counts = jax.vjp(
        lambda c: jax.vmap(group_loss)(c, groups, jnp.arange(num_tasks)), copies, has_aux=True)
    return losses, counts, vjp(jnp.ones((num_tasks,), jnp.float32))[0]

  def gradients(params, batch, dropout_key, method_key, method_state, step):
    """(grads, losses, counts, method output, method state, gram or None)."""
    def losses_of(outputs):
      return loss_vector(tasks, outputs, batch['labels'], batch['label_masks'])

    def task_losses(p):
      return losses_of(apply_model(model, p, batch, dropout_key))

    if not per_task:
      losses, vjp, counts = jax.vjp(task_losses, params, has_aux=True)
      weights, method_state = method.update(info_for(losses, counts, method_key, step),
                                            method_state)
      return vjp(weights)[0], losses, counts, weights, method_state, None

    if mode == 'params':
      if grouped:
        losses, counts, task_grads = grouped_task_gradients(params, batch, dropout_key)
      else:
        losses, vjp, counts = jax.vjp(task_losses, params, has_aux=True)
        (task_grads,) = _task_gradients(vjp, num_tasks)
      shared_grads, head_grads = split(task_grads)
      gram = gram_matrix(shared_grads)
      info = info_for(losses, counts, method_key, step, gram, shared_grads)
      out, new_state = method.update(info, method_state)
      grads = {**shared_update(out, shared_grads),
               **head_update(out, head_grads, info, method_state)}
      return grads, losses, counts, out, new_state, gram

    shared, heads = split(params)
    features, encoder_vjp = jax.vjp(
        lambda s: apply_model(model, s, batch, dropout_key, method='encode'), shared)
    losses, vjp, counts = jax.vjp(
        lambda f, h: losses_of(apply_model(model, h, batch, dropout_key, method='decode',
                                           inputs=(f,))),
        features, heads, has_aux=True)
    feature_grads, head_grads = _task_gradients(vjp, num_tasks)
    gram = gram_matrix(feature_grads)
    info = info_for(losses, counts, method_key, step, gram, feature_grads)
    out, new_state = method.update(info, method_state)
    grads = {**encoder_vjp(shared_update(out, feature_grads))[0],
             **head_update(out, head_grads, info, method_state)}
    return grads, losses, counts, out, new_state, gram

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(state.rng, state.step)
    method_key = jax.random.fold_in(dropout_key, 1 << 30)
    grads, losses, counts, out, method_state, gram = gradients(
        state.params, batch, dropout_key, method_key, state.weighting, state.step)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    weights = (jnp.full((num_tasks,), jnp.nan) if method.needs is Needs.GRADS
               else jnp.asarray(out, jnp.float32))
    metrics = {'loss': joint_loss(losses, jnp.nan_to_num(weights, nan=1.0)),
               'task_losses': losses, 'task_counts': counts, 'task_weights': weights,
               'grad_norm': optax.global_norm(grads), 'learning_rate': learning_rate(state.step)}
    if diagnostics:
      metrics.update(gradient_diagnostics(gram))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              weighting=method_state)
    return new_state, metrics

  return train_step


def gradient_diagnostics(gram: jax.Array) -> dict:
  """Per-task gradient norms and the pairwise cosine matrix (the gradient-conflict matrix)."""
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  cosine = gram / jnp.maximum(jnp.outer(norms, norms), 1e-30)
  return {'task_grad_norms': norms, 'task_grad_cosine': cosine}


def make_predict_step(model: nn.Module, tasks: Sequence[Task]) -> Callable:
  """(params, batch) -> {task: class ids (B,) / tag ids (B, S) / values (B,)}."""
  tasks = tuple(tasks)

  def predict_step(params, batch: dict) -> dict:
    outputs = apply_model(model, params, batch)
    return {t.name: outputs[t.name] if t.kind is TaskKind.REGRESSION
            else jnp.argmax(outputs[t.name], axis=-1) for t in tasks}

  return predict_step
