"""The ways of getting a step's gradient, one function each (`ROUTES`).

  loss_weighted   a loss weighter's λ from the losses, then one backward pass of Σ λ_i L_i;
  task_params     per-task gradients of the shared parameters: one forward pass and a VJP
                  vmapped over the N tasks (N backward passes through the encoder);
  grouped         the same from ONE backward pass, on batches of N equal groups of rows
                  (group i holds task i's rows; sampling strategy 'grouped');
  representation  per-task gradients of the shared representation, then one backward pass
                  through the encoder.

Each takes a `Forward` (the objective's forward pass), the weighting method and the step's
`Inputs`, and returns `Gradients`. Heads get ∇L_i (weighted by the method). The non-task
terms (the architecture's penalty, the objective terms) add their gradient to the method's
update; the objective terms' own parameters get the gradient of their `extra`. Micro-batches
run through `accumulate`, which sums a slice function's results over them.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.objectives.losses import label_counts, loss_vector
from mtl_jax.train.forward import Forward, Terms, apply_model
from mtl_jax.weighting import Method, Needs, StepInfo, combine, gram_matrix, head_weights


class Inputs(NamedTuple):
  """What a route reads from the step."""
  params: Any  # the model's
  term_params: dict  # each objective term's (mtl_jax.objectives.terms), by name
  batch: dict  # this device's rows
  dropout_key: jax.Array  # this device's
  method_key: jax.Array  # the same on every device
  method_state: Any
  step: jax.Array


class Gradients(NamedTuple):
  """What a route returns to the step: all of it is the whole batch's."""
  grads: Any  # for the model's parameters
  term_grads: dict  # for the objective terms' parameters
  losses: jax.Array  # (N,) task losses
  counts: jax.Array  # (N,) labelled units per task
  method_output: Any  # λ (N,) of a loss weighter or GRAM method; a GRADS method's update
  method_state: Any  # the method's new state
  gram: jax.Array | None  # (N, N) Gram matrix of the per-task gradients, if taken
  objective: jax.Array  # the non-task terms' part of the reported objective
  metrics: dict  # the penalty's and the adversary's


Route = Callable[[Forward, Method, Inputs], Gradients]


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


def task_gradient_like(model, params, mode: str, batch_size: int, seq_len: int):
  """Shapes of one task's gradient: the shared parameters, or the shared representation."""
  shared = {k: v for k, v in params.items() if k in model.shared_params}
  if mode == 'params':
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), shared)
  ids = model.example_inputs(batch_size, seq_len)
  representation = jax.eval_shape(
      lambda s, *inputs: apply_model(model, s, {}, method='encode_batch', inputs=inputs),
      shared, ids, ids, ids)
  return Representation.split(representation).floats


def accumulate(fn: Callable, batch: dict, dropout_key: jax.Array, micro_batches: int):
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


def differentiable(terms: Terms):
  """((losses, extra), (objective, metrics)): a forward pass as jax.vjp's has_aux takes it."""
  return (terms.losses, terms.extra), (terms.objective, terms.metrics)


def _info(losses, counts, x: Inputs, gram=None, grads=None) -> StepInfo:
  return StepInfo(jax.lax.stop_gradient(losses), counts > 0, x.method_key, x.step, gram, grads)


def _shared_update(method: Method, out, task_grads):
  """The method's output as one gradient over the tasks' gradients."""
  return out if method.needs is Needs.GRADS else combine(out, task_grads)


def _head_update(method: Method, out, head_grads, info: StepInfo, method_state):
  """Heads get λ_i ∇L_i from a loss weighter, else the method's head weights (default 1)."""
  if method.needs is Needs.LOSSES:
    return combine(out, head_grads)
  return combine(head_weights(method, info, method_state), head_grads)


def _split_shared(model, params) -> tuple[dict, dict]:
  return ({k: v for k, v in params.items() if k in model.shared_params},
          {k: v for k, v in params.items() if k not in model.shared_params})


def _with_extra(vjp, num_tasks: int, has_extra: bool):
  """The VJP's per-task gradients (vmapped over one-hot cotangents of the losses), and
  the extra term's gradient (None when the objective has no extra term)."""
  zero = jnp.zeros((), jnp.float32)
  task_grads = jax.vmap(lambda c: vjp((c, zero)))(jnp.eye(num_tasks, dtype=jnp.float32))
  extra_grads = (vjp((jnp.zeros((num_tasks,), jnp.float32), jnp.ones((), jnp.float32)))
                 if has_extra else None)
  return task_grads, extra_grads


def _add(grads, extra_grads):
  return grads if extra_grads is None else jax.tree.map(jnp.add, grads, extra_grads)


def _forward(f: Forward, x: Inputs, counts, whole=None):
  """(params, term params, slice, dropout key) -> the slice's differentiable terms."""
  return lambda p, t, mb, key: differentiable(f(p, t, mb, key, x.step, counts, whole))


def _counts(f: Forward, batch: dict) -> jax.Array:
  return f.collectives.total(label_counts(f.tasks, batch['label_masks']))


def loss_weighted(f: Forward, method: Method, x: Inputs) -> Gradients:
  """A loss weighter's λ from the batch's losses, then the gradient of Σ λ_i L_i + extra.
  With micro-batches the losses (and a penalty's batch statistics) come from a first
  forward pass over all of them, before the backward passes."""
  c, counts = f.collectives, _counts(f, x.batch)
  one = jnp.ones((), jnp.float32)
  whole = None
  if c.micro_batches > 1:
    def first_pass(mb, key):
      output = apply_model(f.model, x.params, mb, key)
      return f.task_losses(output, mb, counts), output.statistics

    losses, whole = accumulate(first_pass, x.batch, x.dropout_key, c.micro_batches)
    whole = None if whole is None else c.total(whole)
    forward = _forward(f, x, counts, whole)

    def backward(cotangent, mb, key):
      _, vjp, aux = jax.vjp(lambda p, t: forward(p, t, mb, key), x.params, x.term_params,
                            has_aux=True)
      return vjp(cotangent), aux
  else:
    forward = _forward(f, x, counts)
    (losses, _), vjp, aux = jax.vjp(lambda p, t: forward(p, t, x.batch, x.dropout_key),
                                    x.params, x.term_params, has_aux=True)
    backward = lambda cotangent, *_: (vjp(cotangent), aux)  # of the pass just run
  losses = c.total(losses)
  weights, method_state = method.update(_info(losses, counts, x), x.method_state)
  (grads, term_grads), (objective, metrics) = accumulate(
      lambda mb, key: backward((weights, one), mb, key), x.batch, x.dropout_key,
      c.micro_batches)
  return Gradients(c.total(grads), c.total(term_grads), losses, counts, weights,
                   method_state, None, objective, metrics)


def _shared_and_heads(f: Forward, method: Method, x: Inputs, losses, counts, task_grads,
                      extra_grads, term_grads, aux) -> Gradients:
  """Gradients from per-task gradients of the model's parameters: the method combines the
  shared parameters' gradients, the heads get their own."""
  shared_grads, head_grads = _split_shared(f.model, task_grads)
  gram = gram_matrix(shared_grads)
  info = _info(losses, counts, x, gram, shared_grads)
  out, new_state = method.update(info, x.method_state)
  grads = {**_shared_update(method, out, shared_grads),
           **_head_update(method, out, head_grads, info, x.method_state)}
  return Gradients(_add(grads, extra_grads), term_grads, losses, counts, out, new_state,
                   gram, *aux)


def task_params(f: Forward, method: Method, x: Inputs) -> Gradients:
  """Per-task gradients of every parameter from one forward pass and a VJP per task,
  summed over the micro-batches. A penalty on batch statistics needs the whole batch's
  statistics first: with micro-batches, one more forward pass over them."""
  c, counts = f.collectives, _counts(f, x.batch)
  num_tasks = len(f.tasks)
  whole = None
  if c.micro_batches > 1 and f.model.has_statistics:
    statistics = lambda mb, key: apply_model(f.model, x.params, mb, key).statistics
    whole = c.total(accumulate(statistics, x.batch, x.dropout_key, c.micro_batches))

  forward = _forward(f, x, counts, whole)

  def slice_terms(mb, key):
    (losses, _), vjp, aux = jax.vjp(lambda p, t: forward(p, t, mb, key), x.params,
                                    x.term_params, has_aux=True)
    (task_grads, _), extra_grads = _with_extra(vjp, num_tasks, f.has_extra)
    return losses, task_grads, extra_grads, aux

  losses, task_grads, extra_grads, aux = accumulate(slice_terms, x.batch, x.dropout_key,
                                                    c.micro_batches)
  losses, task_grads, extra_grads = c.total((losses, task_grads, extra_grads))
  extra_grads, term_grads = extra_grads or (None, {})
  return _shared_and_heads(f, method, x, losses, counts, task_grads, extra_grads,
                           term_grads, aux)


def grouped(f: Forward, method: Method, x: Inputs) -> Gradients:
  """Per-task gradients from ONE backward pass, for a batch of N equal groups of rows where
  group i holds task i's rows only. Each group runs on its own copy of the parameters
  (vmapped; the matmuls keep their total FLOPs), so the gradient with respect to copy i is
  ∇L_i. The non-task terms take one more forward and backward pass, over the whole batch."""
  counts, num_tasks = _counts(f, x.batch), len(f.tasks)
  groups = jax.tree.map(lambda a: a.reshape((num_tasks, -1) + a.shape[1:]), x.batch)
  copies = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_tasks,) + p.shape), x.params)

  def group_loss(p, group, i):
    outputs = apply_model(f.model, p, group, jax.random.fold_in(x.dropout_key, i)).tasks
    losses, group_counts = loss_vector(f.tasks, outputs, group['labels'],
                                       group['label_masks'])
    return losses[i], group_counts[i]

  losses, vjp, _ = jax.vjp(
      lambda c: jax.vmap(group_loss)(c, groups, jnp.arange(num_tasks)), copies, has_aux=True)
  task_grads = vjp(jnp.ones((num_tasks,), jnp.float32))[0]
  extra_grads, term_grads, aux = None, {}, (jnp.zeros(()), {})
  if f.has_extra:
    forward = _forward(f, x, counts)

    def extra(p, t):
      (_, term), aux = forward(p, t, x.batch, x.dropout_key)
      return term, aux

    (extra_grads, term_grads), aux = jax.grad(extra, (0, 1), has_aux=True)(x.params,
                                                                          x.term_params)
  return _shared_and_heads(f, method, x, losses, counts, task_grads, extra_grads,
                           term_grads, aux)


def representation(f: Forward, method: Method, x: Inputs) -> Gradients:
  """Per-task gradients of the shared representation (the encoder's output): one forward
  pass, a VJP per task through the heads, then one backward pass through the encoder of
  the method's combined cotangent. Under pmap the representation's gradients stay per
  device (each holds its own rows' features); their Gram matrix and the heads' gradients
  are global."""
  c, counts, num_tasks = f.collectives, _counts(f, x.batch), len(f.tasks)
  shared, heads = _split_shared(f.model, x.params)
  encoded, encoder_vjp = jax.vjp(
      lambda s: apply_model(f.model, s, x.batch, x.dropout_key, method='encode_batch'), shared)
  encoded = Representation.split(encoded)

  def decode(floats, h, t):
    output = apply_model(f.model, h, x.batch, x.dropout_key, method='decode_batch',
                         inputs=(encoded.merge(floats),))
    return differentiable(f.of_output(output, t, x.batch, x.step, counts))

  (losses, _), vjp, aux = jax.vjp(decode, encoded.floats, heads, x.term_params, has_aux=True)
  losses = c.total(losses)
  (feature_grads, head_grads, _), extra_grads = _with_extra(vjp, num_tasks, f.has_extra)
  head_grads = c.total(head_grads)
  gram = c.total(gram_matrix(feature_grads))
  info = _info(losses, counts, x, gram, feature_grads)
  out, new_state = method.update(info, x.method_state)
  feature_update = _shared_update(method, out, feature_grads)
  heads_update = _head_update(method, out, head_grads, info, x.method_state)
  term_grads = {}
  if extra_grads is not None:
    feature_update = _add(feature_update, extra_grads[0])
    heads_update = _add(heads_update, c.total(extra_grads[1]))
    term_grads = c.total(extra_grads[2])
  grads = {**c.total(encoder_vjp(encoded.cotangent(feature_update))[0]), **heads_update}
  return Gradients(grads, term_grads, losses, counts, out, new_state, gram, *aux)


ROUTES: dict[str, Route] = {'loss_weighted': loss_weighted, 'task_params': task_params,
                            'grouped': grouped, 'representation': representation}
