"""Packing text-to-text examples into rows (mtl_jax/data/packing.py) and the packed loss
(mtl_jax/objectives/language_model.py): a packed example computes what it computes alone,
targets never cross a segment, the gradient is 0 off the targets, the chunked NLL equals the
whole-logits one, and the per-task losses of a mixed batch equal those taken one task at a
time (the instruction-tuning issue's evidence)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from mtl_jax.data.packing import TextExample, pack, truncate
from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models.decoder import Decoder, DecoderConfig
from mtl_jax.objectives.language_model import (chunked_token_nll, task_example_losses,
                                               task_token_losses)

CFG = DecoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=48, max_position_embeddings=64, rope_theta=100.0,
                    initializer_range=0.3)


def _examples(seed=0, n=7, tasks=3):
  rng = np.random.default_rng(seed)
  return [TextExample(int(rng.integers(tasks)), rng.integers(3, 50, rng.integers(1, 6)).tolist(),
                      rng.integers(3, 50, rng.integers(1, 5)).tolist()) for _ in range(n)]


def _params():
  z = jnp.zeros((1, 4), jnp.int32)
  return nn.unbox(Decoder(CFG).init(jax.random.key(0), z, z,
                                    decoder_lib.segment_mask(z + 1, z)))['params']


def _forward(params, tokens, segments, positions):
  """(hidden, logits) of rows under their segments' causal mask."""
  model = Decoder(CFG)
  out = model.apply({'params': params}, tokens, positions,
                    decoder_lib.segment_mask(segments, positions))
  return out.hidden, model.apply({'params': params}, out.hidden, method=Decoder.logits)


def _alone(example):
  """One example in a row of its own length: (tokens, segments, positions)."""
  tokens = jnp.asarray([list(example.prompt) + list(example.completion)], jnp.int32)
  return tokens, jnp.ones_like(tokens), jnp.arange(tokens.shape[1])[None]


def _nll_by_hand(logits, example):
  """The completion's NLL terms: position t predicts token t + 1 when that is a target."""
  tokens = list(example.prompt) + list(example.completion)
  logits = np.asarray(logits, np.float64)
  return [logsumexp(logits[t]) - logits[t, tokens[t + 1]]
          for t in range(len(example.prompt) - 1, len(tokens) - 1) if t >= 0]


def test_pack_places_first_fit_and_marks_segments_positions_and_targets():
  examples = [TextExample(0, [5, 6, 7], [8, 9]), TextExample(1, [10], [11, 12, 13, 14, 15]),
              TextExample(2, [16, 17], [18]), TextExample(1, [20, 21, 22, 23], [24, 25, 26])]
  rows, stats = pack(examples, rows=2, length=8)
  # First fit: example 0 (5 tokens) and 2 (3) share row 0; 1 (6) opens row 1; 3 (7) fits
  # nowhere and is dropped, not carried.
  np.testing.assert_array_equal(rows.tokens, [[5, 6, 7, 8, 9, 16, 17, 18],
                                              [10, 11, 12, 13, 14, 15, 0, 0]])
  np.testing.assert_array_equal(rows.segment_ids, [[1, 1, 1, 1, 1, 2, 2, 2],
                                                   [1, 1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows.positions, [[0, 1, 2, 3, 4, 0, 1, 2],
                                                 [0, 1, 2, 3, 4, 5, 0, 0]])
  # Position t predicts token t + 1 of its own segment; completion tokens are the targets.
  np.testing.assert_array_equal(rows.targets, [[6, 7, 8, 9, 0, 17, 18, 0],
                                               [11, 12, 13, 14, 15, 0, 0, 0]])
  np.testing.assert_array_equal(rows.loss_mask, [[0, 0, 1, 1, 0, 0, 1, 0],
                                                 [1, 1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(rows.task_ids, [[0] * 5 + [2] * 3, [1] * 6 + [-1] * 2])
  np.testing.assert_array_equal(rows.example_ids, [[0] * 5 + [2] * 3, [1] * 6 + [-1] * 2])
  assert stats == (3, 1, 0, 14, 8, 16) and stats.real_fraction == 14 / 16
  with_prompt, _ = pack(examples[:1], rows=1, length=8, train_on_prompt=True)
  np.testing.assert_array_equal(with_prompt.loss_mask, [[1, 1, 1, 1, 0, 0, 0, 0]])


def test_truncation_keeps_the_completion_start_and_the_prompt_end():
  assert truncate(TextExample(0, [1, 2, 3, 4], [5, 6]), 4) == ([3, 4], [5, 6])
  assert truncate(TextExample(0, [1, 2, 3], [4, 5, 6, 7, 8]), 4) == ([3], [4, 5, 6])
  assert truncate(TextExample(0, [], [4, 5, 6, 7, 8]), 4) == ([], [4, 5, 6, 7])
  rows, stats = pack([TextExample(0, [1, 2, 3], [4, 5, 6, 7, 8])], rows=1, length=4)
  np.testing.assert_array_equal(rows.tokens, [[3, 4, 5, 6]])
  np.testing.assert_array_equal(rows.loss_mask, [[1, 1, 1, 0]])
  assert stats.truncated == 1 and stats.dropped == 0


def test_a_packed_example_has_the_logits_and_loss_it_has_alone():
  params = _params()
  examples = _examples()
  rows, stats = pack(examples, rows=3, length=16)
  assert stats.dropped == 0 and stats.packed == len(examples)
  hidden, logits = _forward(params, *(jnp.asarray(a) for a in (
      rows.tokens, rows.segment_ids, rows.positions)))
  nll = chunked_token_nll(hidden, jnp.asarray(rows.targets), jnp.asarray(rows.loss_mask),
                          lambda h: Decoder(CFG).apply({'params': params}, h,
                                                       method=Decoder.logits), chunk=8)
  for index, example in enumerate(examples):
    where = rows.example_ids == index
    _, alone = _forward(params, *_alone(example))
    np.testing.assert_allclose(logits[where], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(nll)[where & (rows.loss_mask > 0)],
                               _nll_by_hand(alone[0], example), rtol=1e-5)
  # Changing one example changes no other example's outputs.
  changed = list(examples)
  changed[2] = changed[2]._replace(completion=[3] * len(changed[2].completion))
  again, _ = pack(changed, rows=3, length=16)
  _, logits2 = _forward(params, *(jnp.asarray(a) for a in (
      again.tokens, again.segment_ids, again.positions)))
  others = (rows.example_ids != 2) & (rows.example_ids >= 0)
  np.testing.assert_array_equal(logits2[others], logits[others])


@pytest.mark.parametrize('chunk', [1, 5, 64])
def test_the_chunked_nll_equals_the_whole_logits_nll_and_its_gradient(chunk):
  params = _params()
  rows, _ = pack(_examples(seed=1), rows=2, length=24)
  hidden, logits = _forward(params, *(jnp.asarray(a) for a in (
      rows.tokens, rows.segment_ids, rows.positions)))
  targets, mask = jnp.asarray(rows.targets), jnp.asarray(rows.loss_mask)
  table = params['embed']['embedding']  # tied: logits = h · Eᵀ

  def chunked(h, e):
    return chunked_token_nll(h, targets, mask, lambda x: x @ e.T, chunk).sum()

  def whole(h, e):
    z = h @ e.T
    picked = jnp.take_along_axis(z, targets[..., None], -1)[..., 0]
    return jnp.where(mask > 0, jax.nn.logsumexp(z, -1) - picked, 0.0).sum()

  np.testing.assert_allclose(chunked(hidden, table), whole(hidden, table), rtol=1e-5)
  np.testing.assert_allclose(whole(hidden, table), np.sum(np.where(
      rows.loss_mask > 0, logsumexp(np.asarray(logits, np.float64), -1) - np.take_along_axis(
          np.asarray(logits, np.float64), rows.targets[..., None], -1)[..., 0], 0)), rtol=1e-5)
  for got, want in zip(jax.grad(chunked, (0, 1))(hidden, table),
                       jax.grad(whole, (0, 1))(hidden, table)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_gradient_is_zero_at_prompt_and_padding_positions():
  rows, _ = pack(_examples(seed=2), rows=2, length=20)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 20, 50)), jnp.float32)
  mask = jnp.asarray(rows.loss_mask)
  loss = lambda z: task_token_losses(
      chunked_token_nll(z, jnp.asarray(rows.targets), mask, lambda x: x, 7),
      mask, jnp.asarray(rows.task_ids), 3)[0].sum()
  grad = np.asarray(jax.grad(loss)(logits))
  off = rows.loss_mask == 0  # prompt positions, each segment's last token, padding
  assert off.sum() > 10 and np.all(grad[off] == 0.0)
  assert np.all(np.abs(grad[~off]).sum(-1) > 0)


def _task_losses(params, examples, rows, length, num_tasks=4):
  """(per-task token means, per-task example means) of `examples` packed and run."""
  packed, stats = pack(examples, rows, length)
  assert stats.dropped == 0
  hidden, _ = _forward(params, *(jnp.asarray(a) for a in (
      packed.tokens, packed.segment_ids, packed.positions)))
  mask, tasks = jnp.asarray(packed.loss_mask), jnp.asarray(packed.task_ids)
  nll = chunked_token_nll(hidden, jnp.asarray(packed.targets), mask,
                          lambda h: Decoder(CFG).apply({'params': params}, h,
                                                       method=Decoder.logits), chunk=16)
  return (task_token_losses(nll, mask, tasks, num_tasks),
          task_example_losses(nll, mask, tasks, jnp.asarray(packed.example_ids), num_tasks))


def test_per_task_losses_of_a_mixed_batch_equal_one_task_at_a_time():
  params = _params()
  examples = _examples(seed=4, n=9)
  (tokens, counts), (means, per_task) = _task_losses(params, examples, 4, 16)
  for task in range(3):
    own = [ex for ex in examples if ex.task == task]
    (alone, alone_counts), (alone_means, alone_per_task) = _task_losses(params, own, 4, 16)
    np.testing.assert_allclose(tokens[task], alone[task], rtol=2e-5)
    np.testing.assert_allclose(means[task], alone_means[task], rtol=2e-5)
    assert counts[task] == alone_counts[task] == sum(len(ex.completion) for ex in own)
    assert per_task[task] == alone_per_task[task] == len(own)
    # The example mean weighs examples equally, the token mean tokens: they differ here.
    nlls = [np.mean(_nll_by_hand(_forward(params, *_alone(ex))[1][0], ex)) for ex in own]
    np.testing.assert_allclose(means[task], np.mean(nlls), rtol=2e-5)
  assert counts[3] == 0 and tokens[3] == 0.0 and means[3] == 0.0  # task 3 has no examples
