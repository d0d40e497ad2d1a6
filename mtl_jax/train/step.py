"""The compiled steps: train_step(state, batch) -> (state, metrics), and predictions."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtl_jax.objectives.joint import effective_weights, joint_loss
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.state import TrainState

INPUT_KEYS = ('input_ids', 'segment_ids', 'attention_mask')


def apply_model(model: nn.Module, params, batch: dict, dropout_key=None) -> dict:
  """Per-task outputs; dropout is on iff a key is given."""
  rngs = None if dropout_key is None else {'dropout': dropout_key}
  return model.apply({'params': params}, *(batch[k] for k in INPUT_KEYS),
                     deterministic=dropout_key is None, rngs=rngs)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    tasks: Sequence[Task], task_weights: jax.Array,
                    learning_rate: optax.Schedule) -> Callable:
  """Builds the pure step. The static λ enter as data (`task_weights`, shape (N,)).

  Dynamic weighting plugs in where `weights` is formed: it maps the loss vector (or the
  per-task gradients) to weights and keeps its own state in TrainState.
  """
  tasks = tuple(tasks)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def objective(params):
      outputs = apply_model(model, params, batch, dropout_key)
      losses, counts = loss_vector(tasks, outputs, batch['labels'], batch['label_masks'])
      weights = effective_weights(task_weights, counts)
      return joint_loss(losses, weights), (losses, counts, weights)

    (loss, (losses, counts, weights)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'task_losses': losses, 'task_counts': counts,
               'task_weights': weights, 'grad_norm': optax.global_norm(grads),
               'learning_rate': learning_rate(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_predict_step(model: nn.Module, tasks: Sequence[Task]) -> Callable:
  """(params, batch) -> {task: class ids (B,) / tag ids (B, S) / values (B,)}."""
  tasks = tuple(tasks)

  def predict_step(params, batch: dict) -> dict:
    outputs = apply_model(model, params, batch)
    return {t.name: outputs[t.name] if t.kind is TaskKind.REGRESSION
            else jnp.argmax(outputs[t.name], axis=-1) for t in tasks}

  return predict_step
