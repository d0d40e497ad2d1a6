"""Text-to-text training batches (mtl_jax/data/text_batches.py): a pure function of
(seed, step), drawn from the mixture, rendered and packed; overflow dropped and counted."""

import numpy as np
import pytest
from scipy import stats
from test_llm_tokenizer import write_gguf

from mtl_jax.data import llm_tokenizer
from mtl_jax.data.packing import TextExample, pack
from mtl_jax.data.text_batches import TextBatches, batch_of, draw, mixture_of
from mtl_jax.data.text_sources import Conversation


def _conversations(task, n, words):
  return [Conversation(task, (('user', ' '.join(words[:1 + i % 4])),
                              ('assistant', words[i % len(words)])), f'{task}:{i}')
          for i in range(n)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tokenizer = llm_tokenizer.from_gguf(write_gguf(tmp_path_factory.mktemp('t') / 'tiny.gguf'))
  sources = {'greet': _conversations('greet', 30, ['hello', 'world', 'hell', 'he']),
             'echo': _conversations('echo', 5, ['wo', 'rld', 'hello world'])}
  return tokenizer, mixture_of(sources, np.array([0.7, 0.3]))


def test_a_batch_is_a_function_of_seed_and_step(setup):
  tokenizer, mixture = setup
  make = lambda: TextBatches(mixture, tokenizer, seed=3, rows=4, length=48,
                             examples_per_step=12)
  first, again, other_seed = make(), make(), TextBatches(mixture, tokenizer, 4, 4, 48, 12)
  for step in (0, 5):
    a, stats_a = first(step)
    b, stats_b = again(step)  # a resumed run builds its batches anew
    assert stats_a == stats_b
    for key in ('input_ids', 'segment_ids', 'targets', 'loss_mask', 'task_ids'):
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first(0)[0]['input_ids'], first(1)[0]['input_ids'])
  assert not np.array_equal(first(0)[0]['input_ids'], other_seed(0)[0]['input_ids'])


def test_draws_follow_the_mixture_and_are_uniform_within_a_task(setup):
  _, mixture = setup
  drawn = np.array([pair for step in range(200) for pair in draw(mixture, 0, step, 20)])
  counts = np.bincount(drawn[:, 0], minlength=2)
  assert stats.chisquare(counts, mixture.probabilities * counts.sum()).pvalue > 1e-3
  greet = drawn[drawn[:, 0] == 0, 1]
  assert stats.chisquare(np.bincount(greet // 3, minlength=10)).pvalue > 1e-3


def test_rows_hold_the_rendered_chats_and_each_task_s_targets(setup):
  tokenizer, mixture = setup
  batches = TextBatches(mixture, tokenizer, 0, rows=3, length=40, examples_per_step=20)
  batch, pack_stats = batches(2)
  drawn = draw(mixture, 0, 2, 20)
  assert pack_stats.packed + pack_stats.dropped == 20 and pack_stats.dropped > 0
  assert pack_stats.real_tokens == int((batch['segment_ids'] > 0).sum())
  # Every segment is the chat template's rendering of a drawn conversation.
  rendered = {tokenizer.apply_chat_template(
      [{'role': r, 'content': c} for r, c in mixture.sources[t][i].messages], False)
      for t, i in drawn}
  for row in range(3):
    for segment in set(batch['segment_ids'][row].tolist()) - {0}:
      ids = batch['input_ids'][row][batch['segment_ids'][row] == segment]
      assert tokenizer.decode(ids) + '\n' in rendered
  masks = batch['label_masks']
  np.testing.assert_array_equal(masks['greet'] + masks['echo'], batch['loss_mask'])
  assert np.all(batch['task_ids'][masks['echo'] > 0] == 1)
  # A target is a reply token or the end of turn, never the prompt's.
  learnt = tokenizer.decode(batch['targets'][batch['loss_mask'] > 0])
  assert 'user' not in learnt and '<|im_end|>' in learnt


def test_a_task_without_examples_is_refused():
  with pytest.raises(ValueError, match=r"Tasks \['echo'\] have no training examples"):
    mixture_of({'greet': _conversations('greet', 2, ['hi']), 'echo': []}, np.array([0.5, 0.5]))


def test_per_example_weights_make_a_task_s_loss_the_mean_over_its_examples():
  examples = [TextExample(0, (5, 6), (7, 8, 9)), TextExample(1, (5,), (7,)),
              TextExample(0, (4, 4, 4, 4), (9,)), TextExample(0, (3,), (1, 2, 3, 4, 5))]
  rows, packed = pack(examples, rows=2, length=12)
  assert packed.packed == 4
  values = np.random.default_rng(0).normal(size=rows.loss_mask.shape)
  per_token = batch_of(rows, ('a', 'b'))['label_masks']
  per_example = batch_of(rows, ('a', 'b'), per_example=True)['label_masks']
  for task, name in enumerate(('a', 'b')):
    mine = [i for i, e in enumerate(examples) if e.task == task]
    # By hand: each example's mean over its targets, then the mean over the task's examples.
    means = [values[(rows.example_ids == i) & (rows.loss_mask > 0)].mean() for i in mine]
    weights = per_example[name]
    assert np.sum(weights * values) / np.sum(weights) == pytest.approx(np.mean(means))
    targets = (rows.task_ids == task) & (rows.loss_mask > 0)
    assert np.sum(per_token[name] * values) / np.sum(per_token[name]) == pytest.approx(
        values[targets].mean())
  assert per_example['a'].sum() == pytest.approx(3.0)  # one unit per example


def test_rates_on_a_schedule_move_the_draws_between_waypoints(setup):
  _, mixture = setup
  scheduled = mixture_of(dict(zip(mixture.tasks, mixture.sources)), mixture.probabilities,
                         [(0, (1.0, 0.0)), (10, (0.0, 1.0))])
  task_of = lambda step: np.array([t for t, _ in draw(scheduled, 0, step, 400)])
  assert (task_of(0) == 0).all() and (task_of(10) == 1).all() and (task_of(50) == 1).all()
  halfway = np.bincount(task_of(5), minlength=2)
  assert stats.chisquare(halfway, [200, 200]).pvalue > 1e-3
  with pytest.raises(ValueError, match='one rate per trained task'):
    mixture_of(dict(zip(mixture.tasks, mixture.sources)), mixture.probabilities,
               [(0, (1.0, 0.0, 0.0))])


def test_grouped_batches_put_each_task_s_draws_in_its_own_rows(setup):
  tokenizer, mixture = setup
  batches = TextBatches(mixture, tokenizer, 0, rows=4, length=40, examples_per_step=8,
                        per_example=True, grouped=True)
  for step in range(3):
    batch, packed = batches(step)
    assert packed.packed + packed.dropped == 8
    for task, name in enumerate(mixture.tasks):  # rows 2t, 2t + 1 hold task t's 4 draws
      group = batch['task_ids'][2 * task:2 * task + 2]
      assert set(np.unique(group)) <= {-1, task} and (group == task).any()
      # One unit of weight per packed example of the task: the example ids stay distinct.
      placed = len({(r, s) for r, s in zip(*np.nonzero(group == task))
                    for s in [batch['segment_ids'][2 * task + r, s]]})
      assert batch['label_masks'][name].sum() == pytest.approx(placed)
  with pytest.raises(ValueError, match='multiples of the task count'):
    TextBatches(mixture, tokenizer, 0, rows=3, length=40, examples_per_step=8, grouped=True)
