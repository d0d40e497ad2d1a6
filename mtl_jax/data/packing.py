"""Packing text-to-text examples into fixed-shape rows for a decoder LLM.

An example is token ids: a prompt (read, not learnt from, unless the loss is asked to train
on prompts) and a completion (its targets, ending with the template's end-of-turn token).
`pack` places a step's examples greedily, first fit in their order, into `rows` rows of
`length` tokens. An example that fits in no row is dropped and counted, never carried into
the next step: a step's batch is a function of its own examples only, so a resumed run
draws exactly the batches it would have drawn.

Truncation (an example longer than a row): the completion keeps its first `length` − 1 tokens
(`length` without a prompt), then the prompt keeps as many of its LAST tokens as the row has
room for (the end of a prompt, next to the answer, matters most; at least one stays). Such an
example is counted in `truncated`. An example with no tokens at all is dropped.

Each row holds segments 1, 2, ... (0 is padding); positions restart at 0 in every segment,
and attention stays within a segment (models.decoder.segment_mask). Position t of a segment
predicts its token t + 1: `targets[t]` is that token and `loss_mask[t]` is 1 when it is a
target (a completion token, or with `train_on_prompt` any token after the first), so no
position ever predicts across a segment boundary or into padding. `task_ids` and
`example_ids` (the example's index in the step's list) mark every token of a segment; both
are -1 on padding.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class TextExample(NamedTuple):
  """A tokenised text-to-text example of task `task` (its index in the run's tasks)."""
  task: int
  prompt: Sequence[int]
  completion: Sequence[int]


class PackStats(NamedTuple):
  """What packing kept: examples placed, dropped (no room) and truncated (longer than a
  row); real tokens (not padding) and target tokens, of rows × length slots."""
  packed: int
  dropped: int
  truncated: int
  real_tokens: int
  target_tokens: int
  slots: int

  @property
  def real_fraction(self) -> float:
    return self.real_tokens / self.slots


class PackedRows(NamedTuple):
  """Arrays (rows, length): int32 but `loss_mask` (float32)."""
  tokens: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  targets: np.ndarray
  loss_mask: np.ndarray
  task_ids: np.ndarray
  example_ids: np.ndarray


def truncate(example: TextExample, length: int) -> tuple[list[int], list[int]]:
  """(prompt, completion) cut to at most `length` tokens together (the module's policy)."""
  prompt, completion = list(example.prompt), list(example.completion)
  if len(prompt) + len(completion) <= length:
    return prompt, completion
  completion = completion[:length - min(len(prompt), 1)]
  room = length - len(completion)
  return (prompt[len(prompt) - room:] if room else []), completion


def pack(examples: Sequence[TextExample], rows: int, length: int,
         train_on_prompt: bool = False) -> tuple[PackedRows, PackStats]:
  """`examples` packed first fit into `rows` rows of `length` tokens (module docstring)."""
  if length < 2:
    raise ValueError(f'a row of {length} token(s) holds no next-token target.')
  out = PackedRows(*(np.zeros((rows, length), np.int32) for _ in range(4)),
                   np.zeros((rows, length), np.float32),
                   np.full((rows, length), -1, np.int32), np.full((rows, length), -1, np.int32))
  used = np.zeros(rows, np.int64)
  segments = np.zeros(rows, np.int64)
  dropped = truncated = 0
  for index, example in enumerate(examples):
    prompt, completion = truncate(example, length)
    size = len(prompt) + len(completion)
    if size == 0:
      dropped += 1
      continue
    truncated += size < len(example.prompt) + len(example.completion)
    free = np.flatnonzero(length - used >= size)
    if not free.size:
      dropped += 1
      continue
    row, start = free[0], used[free[0]]
    span = slice(start, start + size)
    segments[row] += 1
    used[row] += size
    tokens = np.asarray(prompt + completion, np.int32)
    is_target = np.zeros(size, bool)
    is_target[len(prompt):] = True
    if train_on_prompt:
      is_target[1:] = True
    out.tokens[row, span] = tokens
    out.segment_ids[row, span] = segments[row]
    out.positions[row, span] = np.arange(size)
    out.targets[row, start:start + size - 1] = tokens[1:]
    out.loss_mask[row, start:start + size - 1] = is_target[1:]
    out.task_ids[row, span] = example.task
    out.example_ids[row, span] = index
  stats = PackStats(packed=int(segments.sum()), dropped=dropped, truncated=int(truncated),
                    real_tokens=int(used.sum()), target_tokens=int(out.loss_mask.sum()),
                    slots=rows * length)
  return out, stats
