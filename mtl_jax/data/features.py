"""Examples -> fixed-shape numpy feature tables that batches are sliced from.

A table is a dict of arrays with one leading row axis:
  input_ids, segment_ids, attention_mask: (n, S) int32; (n, C, S) when a task of the run is
    multiple choice (C = mtl_jax.tasks.num_choices: a multiple-choice row fills its C
    candidates, any other row the first, the rest are all zero, attended nowhere)
  labels[task]: (n,) int32 class, (n,) float32 value, or (n, S) int32 tag per token
  label_masks[task]: float32, same shape as labels[task]; 1 where the label is present.
Every table carries labels and masks for every task of the run, so rows of several tasks
stack into one batch and each task's loss reads only its own mask.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from mtl_jax.tasks import Task, TaskKind, num_choices


INPUT_KEYS = ('input_ids', 'segment_ids', 'attention_mask')  # what the model reads of a table


class Example(NamedTuple):
  """One input (one text, or a pair) and the labels it carries; None marks a missing label.

  A text is a string, or a list of words when word-level labels must align with it.
  A multiple-choice example has no `inputs` but `choices`: one input per candidate, and its
  label is the index of the right one. `idx` is the record's id in its dataset where it has
  one (TFDS's 'idx': an int, or MultiRC's {'paragraph', 'question', 'answer'}): submission
  files name rows by it, and it says which rows are scored together
  (mtl_jax.data.tfds_source.group_ids).
  """
  inputs: tuple[str | list[str], ...]
  labels: dict[str, Any]
  choices: tuple[tuple[str, ...], ...] = ()
  idx: Any = None


def as_text(value: str | bytes) -> str:
  """TFDS text features come back as bytes from stored files and as str from mock data."""
  return value.decode('utf-8') if isinstance(value, bytes) else value


def _label_arrays(task: Task, n: int, seq_len: int):
  if task.kind is TaskKind.TAGGING:
    return np.zeros((n, seq_len), np.int32), np.zeros((n, seq_len), np.float32)
  dtype = np.float32 if task.kind is TaskKind.REGRESSION else np.int32
  return np.zeros((n,), dtype), np.zeros((n,), np.float32)


def _check_label(task: Task, value, where: str):
  if task.kind is TaskKind.TAGGING:
    bad = [v for v in value if not 0 <= v < task.num_labels]
  elif task.kind in (TaskKind.CLASSIFICATION, TaskKind.MULTIPLE_CHOICE):
    bad = [] if 0 <= value < task.num_labels else [value]
  else:
    bad = [] if np.isfinite(value) else [value]
  if bad:
    raise ValueError(f'{where}: task {task.name!r} has invalid label(s) {bad[:5]} '
                     f'(expected {task.num_labels} classes).')


def _fits(task: Task, example: Example) -> bool:
  """Whether `example` has the shape of `task`'s input (a label of another shape is ignored:
  a built-in sentence carries no pair task's label, a COPA example no other task's)."""
  if task.kind is TaskKind.MULTIPLE_CHOICE:
    return len(example.choices) == task.num_labels
  return not example.choices and len(example.inputs) == len(task.input_fields)


def carries(task: Task, example: Example) -> bool:
  """Whether `example` is labelled for `task` (its table row gets the task's label)."""
  return example.labels.get(task.name) is not None and _fits(task, example)


def _encode(tokenizer, inputs: list, seq_len: int) -> tuple[dict, list]:
  """Token arrays (n, S) of each row's input (a text, a pair, or None: an empty slot, all
  zero), and the rows' encodings (None for an empty slot)."""
  rows = [i for i, x in enumerate(inputs) if x is not None]
  pretokenized = bool(rows) and isinstance(inputs[rows[0]][0], list)
  batch = [inputs[i][0] if len(inputs[i]) == 1 else tuple(inputs[i]) for i in rows]
  encoded = tokenizer.encode_batch(batch, is_pretokenized=pretokenized)
  arrays = {}
  for key, field in (('input_ids', 'ids'), ('segment_ids', 'type_ids'),
                     ('attention_mask', 'attention_mask')):
    arrays[key] = np.zeros((len(inputs), seq_len), np.int32)
    arrays[key][rows] = np.asarray([getattr(e, field) for e in encoded],
                                   np.int32).reshape(len(rows), seq_len)
  encodings = [None] * len(inputs)
  for i, enc in zip(rows, encoded):
    encodings[i] = enc
  return arrays, encodings


def _candidates(example: Example, choice: int):
  """The example's input in candidate slot `choice`, or None (an empty slot)."""
  if example.choices:
    return example.choices[choice] if choice < len(example.choices) else None
  return example.inputs if choice == 0 else None


def encode_examples(examples: Sequence[Example], tasks: Sequence[Task], tokenizer,
                    seq_len: int, where: str = 'examples',
                    row_ids: Sequence[int] | None = None) -> dict:
  """Tokenises examples and aligns every task's labels with the tokens.

  `row_ids`: each example's row in its dataset, which errors name (default: its position).

  Word-level tags go on the first word piece of each word in the first text; the other
  pieces, the special tokens, padding and truncated words are masked out.
  """
  n = len(examples)
  slots = [_encode(tokenizer, [_candidates(ex, c) for ex in examples], seq_len)
           for c in range(num_choices(tasks))]
  encodings = slots[0][1]
  table = {k: slots[0][0][k] if len(slots) == 1 else np.stack([a[k] for a, _ in slots], 1)
           for k in slots[0][0]}
  table.update(labels={}, label_masks={})
  for task in tasks:
    labels, masks = _label_arrays(task, n, seq_len)
    for row, (ex, enc) in enumerate(zip(examples, encodings)):
      if not carries(task, ex):
        continue
      value = ex.labels[task.name]
      at = f'{where}, row {row if row_ids is None else row_ids[row]}'
      _check_label(task, value, at)
      if task.kind is TaskKind.TAGGING:
        words = ex.inputs[0]
        if not isinstance(words, list) or len(words) != len(value):
          raise ValueError(f'{at}: task {task.name!r} needs one tag per word '
                           f'of a pre-split text.')
        seen = set()
        for pos, (word, seq) in enumerate(zip(enc.word_ids, enc.sequence_ids)):
          if seq == 0 and word is not None and word not in seen:
            seen.add(word)
            labels[row, pos], masks[row, pos] = value[word], 1.0
      else:
        labels[row], masks[row] = value, 1.0
    table['labels'][task.name], table['label_masks'][task.name] = labels, masks
  return table


def concat_tables(tables: Sequence[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *tables)


def num_rows(table: dict) -> int:
  return int(table['input_ids'].shape[0])
