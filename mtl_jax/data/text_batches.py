"""The training batches of text-to-text tasks: each step's examples drawn from the task
mixture, rendered with the chat template, and packed into rows.

A step's batch is a pure function of (seed, step): its `examples_per_step` examples pick a
task with the mixture's probabilities (at that step, on a schedule) and one of that task's examples uniformly (with
replacement), from numpy's generator seeded with [seed, step], exactly as the classification
batches do (data/mixture.py). Grouped batches (gradient methods' per-task gradients from one
backward pass, train.gradients.grouped) draw examples_per_step // N examples of each task and
pack task i's into its own rows // N consecutive rows. They are packed first fit in that order (data/packing.py);
those that do not fit are dropped and counted in the batch's stats, never carried over, so a
resumed run draws the batches it would have drawn.

A batch holds the packed rows as the step reads them:
  input_ids, segment_ids (B, S)    tokens and segments (0 = padding); positions restart per
                                   segment (models.decoder.segment_positions)
  attention_mask (B, S)            segment_ids > 0
  targets, loss_mask (B, S)        position t's next token, and whether it is learnt
  task_ids (B, S)                  each token's task (-1 on padding)
  label_masks[task] (B, S)         loss_mask where the token is that task's: a task's loss is
                                   its masked mean, as for any other task (per_example: each
                                   target weighs 1 / its example's targets, batch_of)
  labels                           {}: a text task's targets are the tokens
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from mtl_jax.data.instructions import tokenize
from mtl_jax.data.llm_tokenizer import LlmTokenizer
from mtl_jax.data.mixture import scheduled_rates
from mtl_jax.data.packing import PackedRows, PackStats, TextExample, pack
from mtl_jax.data.text_sources import Conversation


CACHED = 1 << 16  # rendered examples kept by TextBatches
INPUT_KEYS = ('input_ids', 'segment_ids', 'loss_mask')  # what the language model reads
TRAIN_KEYS = (*INPUT_KEYS, 'labels', 'label_masks')  # what its train step reads


class TextMixture(NamedTuple):
  """The run's text-to-text training data: per task (in the run's order), its examples as
  conversations (any sequence: a list, or a lazy view of labelled examples in templates),
  and the probability of drawing it; or, with a `schedule` of (step, rates) waypoints,
  the rates at each step (mixture.scheduled_rates)."""
  tasks: tuple[str, ...]
  sources: tuple[Sequence[Conversation], ...]
  probabilities: np.ndarray
  schedule: tuple = ()

  def rates(self, step: int) -> np.ndarray:
    """The probability of drawing each task at step `step`."""
    return scheduled_rates(self.schedule, step) if self.schedule else self.probabilities


def draw(mixture: TextMixture, seed: int, step: int, count: int) -> list[tuple[int, int]]:
  """The (task, example index) pairs of step `step`'s `count` examples."""
  rng = np.random.default_rng([seed, step])
  tasks = rng.choice(len(mixture.tasks), size=count, p=mixture.rates(step))
  sizes = np.asarray([len(s) for s in mixture.sources])
  index = (rng.random(count) * sizes[tasks]).astype(np.int64)
  return list(zip(tasks.tolist(), index.tolist()))


def draw_grouped(mixture: TextMixture, seed: int, step: int, count: int
                 ) -> list[tuple[int, int]]:
  """Grouped batches' draws: count // N examples of each task in turn, each uniform within its
  task."""
  rng = np.random.default_rng([seed, step])
  per_task = count // len(mixture.tasks)
  return [(task, int(i)) for task, source in enumerate(mixture.sources)
          for i in (rng.random(per_task) * len(source)).astype(np.int64)]


def _stacked(parts: Sequence[tuple[PackedRows, PackStats]]) -> tuple[PackedRows, PackStats]:
  """Groups of packed rows, one after another, their example ids made distinct."""
  offsets = np.cumsum([0] + [stats.packed + stats.dropped for _, stats in parts])
  fields = []
  for name in PackedRows._fields:
    arrays = [getattr(rows, name) for rows, _ in parts]
    if name == 'example_ids':
      arrays = [np.where(a >= 0, a + o, a) for a, o in zip(arrays, offsets)]
    fields.append(np.concatenate(arrays))
  return PackedRows(*fields), PackStats(*np.sum([s for _, s in parts], axis=0).tolist())


class TextBatches:
  """step -> (batch, PackStats) for a mixture, a tokenizer and the batch's shape. Rendered
  examples are kept, the latest CACHED of them (an example drawn again is not rendered
  again)."""

  def __init__(self, mixture: TextMixture, tokenizer: LlmTokenizer, seed: int, rows: int,
               length: int, examples_per_step: int, train_on_prompt: bool = False,
               per_example: bool = False, grouped: bool = False):
    self.mixture, self.tokenizer, self.seed = mixture, tokenizer, seed
    self.rows, self.length, self.count = rows, length, examples_per_step
    self.train_on_prompt, self.per_example = train_on_prompt, per_example
    self.grouped = grouped
    if grouped and (rows % len(mixture.tasks) or examples_per_step < len(mixture.tasks)):
      raise ValueError(f'grouped batches split {rows} rows and {examples_per_step} examples '
                       f'among {len(mixture.tasks)} tasks: give multiples of the task count.')
    task_index = {name: i for i, name in enumerate(mixture.tasks)}
    self.example: Callable[[int, int], TextExample] = functools.lru_cache(maxsize=CACHED)(
        lambda task, i: tokenize(tokenizer, mixture.sources[task][i], task_index))

  def __call__(self, step: int) -> tuple[dict, PackStats]:
    if self.grouped:
      drawn = draw_grouped(self.mixture, self.seed, step, self.count)
      rows_each = self.rows // len(self.mixture.tasks)
      rows, stats = _stacked([pack([self.example(t, i) for t, i in drawn if t == task],
                                   rows_each, self.length, self.train_on_prompt)
                              for task in range(len(self.mixture.tasks))])
    else:
      drawn = draw(self.mixture, self.seed, step, self.count)
      rows, stats = pack([self.example(t, i) for t, i in drawn], self.rows, self.length,
                         self.train_on_prompt)
    return batch_of(rows, self.mixture.tasks, self.per_example), stats


def example_weights(rows) -> np.ndarray:
  """(B, S): the loss mask divided by the number of targets of its example, so that a
  masked mean under it is the mean over examples of each example's mean token loss."""
  ids = np.where(rows.loss_mask > 0, rows.example_ids, -1)
  counts = np.bincount(ids[ids >= 0], minlength=max(int(rows.example_ids.max()) + 1, 1))
  return np.where(ids >= 0, rows.loss_mask / np.maximum(counts[np.maximum(ids, 0)], 1),
                  0.0).astype(np.float32)


def batch_of(rows, tasks: Sequence[str], per_example: bool = False) -> dict:
  """The step's batch (module docstring) of packed rows. `per_example`: each task's loss is
  the mean over its examples (each example's mean over its target tokens) instead of the
  mean over its target tokens: its label mask weighs each target by 1 / its example's
  targets."""
  weights = example_weights(rows) if per_example else rows.loss_mask
  return {'input_ids': rows.tokens, 'segment_ids': rows.segment_ids,
          'attention_mask': (rows.segment_ids > 0).astype(np.int32), 'targets': rows.targets,
          'loss_mask': rows.loss_mask, 'task_ids': rows.task_ids, 'labels': {},
          'label_masks': {name: weights * (rows.task_ids == i) for i, name in enumerate(tasks)}}


def mixture_of(sources: Mapping[str, Sequence[Conversation]], probabilities: np.ndarray,
               schedule: Sequence = ()) -> TextMixture:
  """A TextMixture of `sources` (task -> conversations, in the run's order)."""
  empty = [task for task, examples in sources.items() if not len(examples)]
  if empty:
    raise ValueError(f'Tasks {empty} have no training examples; the mixture cannot draw them.')
  if schedule:
    scheduled_rates(schedule, 0)  # raises on a bad schedule
    widths = {len(rates) for _, rates in schedule}
    if widths != {len(sources)}:
      raise ValueError(f'a rate schedule needs one rate per trained task ({len(sources)}), '
                       f'got {sorted(widths)}.')
  return TextMixture(tuple(sources), tuple(sources.values()), np.asarray(probabilities),
                     tuple((int(step), tuple(rates)) for step, rates in schedule))
