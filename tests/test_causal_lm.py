"""The language model of text-to-text tasks (mtl_jax/models/causal_lm.py) in the train step:
its per-task losses against an independent whole-logits computation, and one step of a loss
weighter and of a gradient method against jax.grad of that computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import weighting
from mtl_jax.data.packing import TextExample, pack
from mtl_jax.data.text_batches import batch_of
from mtl_jax.models import architectures
from mtl_jax.models.backbone import DecoderBackboneConfig
from mtl_jax.models.causal_lm import CausalLM, next_tokens
from mtl_jax.models.decoder import Decoder, DecoderConfig, segment_mask
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward
from mtl_jax.train.loop import create_state
from mtl_jax.train.step import choose_route, make_train_step

CFG = DecoderConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=48, max_position_embeddings=64, rope_theta=100.0,
                    tie_word_embeddings=False, initializer_range=0.3)
TASKS = tuple(Task(name, TaskKind.TEXT, 0, ('messages',), 'messages', ('nll',), 'jsonl')
              for name in ('qa', 'chat', 'translate'))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  examples = [TextExample(int(rng.integers(3)), rng.integers(3, 40, rng.integers(2, 6)).tolist(),
                          rng.integers(3, 40, rng.integers(1, 5)).tolist()) for _ in range(9)]
  rows, stats = pack(examples, rows=4, length=20)
  assert stats.dropped == 0
  return jax.tree.map(jnp.asarray, batch_of(rows, [t.name for t in TASKS]))


def _whole_logits_losses(decoder_params, batch):
  """Each task's mean NLL over its target tokens, from the (B, S, V) logits at once."""
  model = Decoder(CFG)
  segments = batch['segment_ids']
  starts = np.asarray(segments) != np.pad(np.asarray(segments), ((0, 0), (1, 0)))[:, :-1]
  positions = np.zeros((4, 20), np.int32)
  for r in range(4):
    for t in range(20):
      positions[r, t] = 0 if starts[r, t] else positions[r, t - 1] + 1
  out = model.apply({'params': decoder_params}, batch['input_ids'], jnp.asarray(positions),
                    segment_mask(segments, jnp.asarray(positions)))
  logits = model.apply({'params': decoder_params}, out.hidden, method=Decoder.logits)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
  masks = [batch['label_masks'][t.name] for t in TASKS]
  return jnp.stack([jnp.sum(nll * m) / jnp.sum(m) for m in masks])


def test_the_model_s_task_losses_equal_whole_logits_and_its_targets_the_packer_s():
  model = architectures.build('hard', DecoderBackboneConfig(CFG), TASKS, {'chunk': 8})
  assert isinstance(model, CausalLM)
  batch = _batch()
  learnt = batch['loss_mask'] > 0
  np.testing.assert_array_equal(
      next_tokens(batch['input_ids'], batch['segment_ids'])[learnt], batch['targets'][learnt])
  params = nn.unbox(model.init(jax.random.key(0), batch['input_ids'], batch['segment_ids'],
                               batch['loss_mask']))['params']
  output = model.apply({'params': params}, *(batch[k] for k in model.input_keys))
  losses, counts = loss_vector(TASKS, output.tasks, batch['labels'], batch['label_masks'])
  np.testing.assert_allclose(losses, _whole_logits_losses(params['encoder'], batch), rtol=1e-5)
  np.testing.assert_array_equal(counts, [batch['label_masks'][t.name].sum() for t in TASKS])
  with pytest.raises(ValueError, match=r"tasks \['sentiment'\] are not text-to-text"):
    CausalLM(DecoderBackboneConfig(CFG), TASKS + (Task(
        'sentiment', TaskKind.CLASSIFICATION, 2, ('a',), 'a', ('accuracy',), 'b'),)).validate()


@pytest.mark.integration
@pytest.mark.parametrize('method', ['equal', 'pcgrad'])
def test_a_train_step_on_packed_rows_takes_the_loss_s_gradient(method):
  """SGD, so the step's update is -lr × the gradient it formed: for equal weights that of
  Σ_i L_i; PCGrad's per-task gradients of the shared decoder come from the same losses (its
  update is checked against its own definition in test_weighting_step.py)."""
  model = CausalLM(DecoderBackboneConfig(CFG), TASKS, chunk=8)
  lr = 0.1
  optimizer = optax.sgd(lr)
  chosen = weighting.get(method)
  state = create_state(model, optimizer, chosen, len(TASKS), 0, 20, 'params', 4)
  forward = Forward(model, TASKS, {}, Collectives(None, 1))
  route = choose_route(chosen, 'params', False, False, forward.collectives)
  step = make_train_step(forward, route, chosen, optimizer, optax.constant_schedule(lr))
  batch = _batch(1)
  new, metrics = jax.jit(step)(state, batch)
  expected = _whole_logits_losses(state.params['encoder'], batch)
  np.testing.assert_allclose(metrics['task_losses'], expected, rtol=1e-5)
  moved = jax.tree.map(lambda a, b: a - b, new.params['encoder'], state.params['encoder'])
  if method == 'equal':
    grad = jax.grad(lambda p: _whole_logits_losses(p, batch).sum())(state.params['encoder'])
    jax.tree.map(lambda m, g: np.testing.assert_allclose(m, -lr * g, rtol=2e-3, atol=1e-6),
                 moved, grad)
  else:
    assert all(np.all(np.isfinite(x)) and np.any(x != 0) for x in jax.tree.leaves(moved))


@pytest.mark.integration
def test_grouped_rows_give_a_gradient_method_the_per_task_gradients_of_mixed_rows():
  """The grouped route (one backward pass over vmapped parameter copies, a group of rows per
  task) against the per-task VJP route, on the same rows: the same PCGrad update."""
  rng = np.random.default_rng(3)
  parts = []
  for task in range(len(TASKS)):  # task t's examples packed into rows 2t and 2t + 1
    examples = [TextExample(task, rng.integers(3, 40, 3).tolist(), rng.integers(3, 40, 2).tolist())
                for _ in range(4)]
    parts.append(pack(examples, rows=2, length=12)[0])
  rows = jax.tree.map(lambda *a: np.concatenate(a), *parts)
  batch = jax.tree.map(jnp.asarray, batch_of(rows, [t.name for t in TASKS]))
  model = CausalLM(DecoderBackboneConfig(CFG), TASKS, chunk=8)
  optimizer, method = optax.sgd(0.1), weighting.get('pcgrad')
  state = create_state(model, optimizer, method, len(TASKS), 0, 12, 'params', 6)
  forward = Forward(model, TASKS, {}, Collectives(None, 1))
  updates = []
  for grouped in (True, False):
    route = choose_route(method, 'params', False, grouped, forward.collectives)
    step = make_train_step(forward, route, method, optimizer, optax.constant_schedule(0.1))
    updates.append(jax.jit(step)(state, batch))
  (grouped_state, grouped_metrics), (mixed_state, mixed_metrics) = updates
  np.testing.assert_allclose(grouped_metrics['task_losses'], mixed_metrics['task_losses'],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grouped_state.params, mixed_state.params)
  assert not np.allclose(grouped_state.params['encoder']['embed']['embedding'],
                         state.params['encoder']['embed']['embedding'])
