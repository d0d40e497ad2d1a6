"""Evaluation of text-to-text tasks with a decoder LLM: the log-likelihood of continuations
(a task's evaluation loss and bits per byte; rank classification over options) and
generated answers.

Every example is scored whole: examples are packed into rows of `length` tokens, batch after
batch, until all are placed (none is dropped or truncated; one longer than a row is an
error). A packed example computes what it computes alone (data/packing.py), so the scores do
not depend on the batch it shares.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.data.instructions import tokenize
from mtl_jax.data.llm_tokenizer import LlmTokenizer
from mtl_jax.data.packing import TextExample, pack
from mtl_jax.data.text_sources import Conversation
from mtl_jax import progress
from mtl_jax.data.text_data import GENERAL, TextData
from mtl_jax.metrics import (answer_exact_match, answer_f1, bits_per_byte, compute_metrics,
                             rank_accuracy, rank_accuracy_norm)
from mtl_jax.tasks.text import GENERATED, LIKELIHOOD, RANKED
from mtl_jax.models.causal_lm import next_tokens
from mtl_jax.models.decoder import Decoder, segment_mask, segment_positions
from mtl_jax.models.generation import Generator, Sampling, split_layers
from mtl_jax.objectives.language_model import chunked_token_nll


class Scored(NamedTuple):
  """Per example: the completion's summed NLL in nats, and its number of tokens."""
  nats: np.ndarray
  tokens: np.ndarray


@functools.lru_cache(maxsize=8)
def _nll_fn(model: Decoder, chunk: int):
  """The jitted per-position NLL of packed rows, one per (decoder, chunk) in a process: every
  evaluation of a run's fits reuses its compiled programs."""
  def nll(params, tokens, segments, loss_mask):
    positions = segment_positions(segments)
    hidden = model.apply({'params': params}, tokens, positions,
                         segment_mask(segments, positions, model.cfg.sliding_window)).hidden
    project = model.apply({'params': params}, method=Decoder.output_projection)
    return chunked_token_nll(hidden, next_tokens(tokens, segments), loss_mask, project, chunk)
  return jax.jit(nll)


def score_completions(model: Decoder, params, examples: Sequence[TextExample], rows: int,
                      length: int, chunk: int = 512) -> Scored:
  """Each example's completion NLL given its prompt (the sum over its completion tokens)."""
  too_long = [i for i, ex in enumerate(examples) if len(ex.prompt) + len(ex.completion) > length]
  if too_long:
    raise ValueError(f'evaluation example(s) {too_long[:5]} do not fit a row of {length} '
                     f'tokens; evaluate with longer rows.')
  nll_fn = _nll_fn(model, chunk)
  nats, tokens = np.zeros(len(examples)), np.zeros(len(examples), np.int64)
  remaining = list(range(len(examples)))
  while remaining:
    packed, _ = pack([examples[i] for i in remaining], rows, length)
    nll = np.asarray(nll_fn(params, jnp.asarray(packed.tokens), jnp.asarray(packed.segment_ids),
                            jnp.asarray(packed.loss_mask)))
    placed = sorted(set(packed.example_ids[packed.example_ids >= 0].tolist()))
    for local in placed:
      where = (packed.example_ids == local) & (packed.loss_mask > 0)
      nats[remaining[local]] = nll[where].sum()
      tokens[remaining[local]] = where.sum()
    remaining = [remaining[i] for i in range(len(remaining)) if i not in set(placed)]
  return Scored(nats, tokens)


def completion_bytes(tokenizer: LlmTokenizer, example: TextExample) -> int:
  """UTF-8 bytes of the completion's text, its special tokens (the end of turn) left out."""
  return len(tokenizer.decode(example.completion, skip_special_tokens=True).encode('utf-8'))


def loss_and_bits_per_byte(model: Decoder, params, tokenizer: LlmTokenizer,
                           conversations: Sequence[Conversation], rows: int, length: int
                           ) -> dict[str, float]:
  """A task's evaluation loss (mean NLL per completion token) and bits per byte (Σ nats
  over its replies / (ln 2 · their UTF-8 bytes)) over its conversations."""
  examples = [tokenize(tokenizer, c, {c.task: 0}) for c in conversations]
  scored = score_completions(model, params, examples, rows, length)
  return {'loss': float(scored.nats.sum() / max(scored.tokens.sum(), 1)),
          'bits_per_byte': bits_per_byte(scored.nats, [completion_bytes(tokenizer, e)
                                                       for e in examples])}


def option_loglikelihoods(model: Decoder, params, tokenizer: LlmTokenizer,
                          prompts: Sequence[Sequence[tuple[str, str]]],
                          options: Sequence[Sequence[str]], rows: int, length: int
                          ) -> tuple[np.ndarray, np.ndarray]:
  """(log-likelihoods, UTF-8 bytes), each (prompts, options): of each option as the reply
  to its prompt (its messages), the option's text and the end of turn rendered by the chat
  template."""
  examples, option_bytes = [], []
  for messages, choices in zip(prompts, options):
    for option in choices:
      conversation = Conversation('', tuple(messages) + (('assistant', option),), 'options')
      examples.append(tokenize(tokenizer, conversation, {'': 0}))
      option_bytes.append(len(option.encode('utf-8')))
  widths = {len(c) for c in options}
  if len(widths) != 1:
    raise ValueError(f'every prompt needs the same number of options, got {sorted(widths)}.')
  scored = score_completions(model, params, examples, rows, length)
  count = widths.pop()
  return (-scored.nats.reshape(-1, count),
          np.asarray(option_bytes, np.float64).reshape(-1, count))


def rank_classification(model: Decoder, params, tokenizer: LlmTokenizer,
                        prompts: Sequence[Sequence[tuple[str, str]]],
                        options: Sequence[Sequence[str]], labels: Sequence[int], rows: int,
                        length: int) -> dict[str, float]:
  """acc and acc_norm of choosing, for each prompt (its messages), the likeliest option."""
  loglik, lengths = option_loglikelihoods(model, params, tokenizer, prompts, options, rows,
                                          length)
  return {'acc': rank_accuracy(loglik, labels),
          'acc_norm': rank_accuracy_norm(loglik, lengths, labels)}


@functools.lru_cache(maxsize=4)
def _generator(model: Decoder, stop_ids: tuple[int, ...], pad_id: int) -> Generator:
  """One Generator per (decoder, stop ids, padding) in a process, its compiled prefill and
  step reused: generated_answers gives it each call's parameters."""
  return Generator(model, None, stop_ids, pad_id)


def generated_answers(model: Decoder, params, tokenizer: LlmTokenizer,
                      prompts: Sequence[Sequence[tuple[str, str]]], max_new_tokens: int,
                      batch: int = 8) -> list[str]:
  """Greedy replies to each prompt (its messages), left-padded `batch` at a time, cut at the
  end of turn; their text without special tokens."""
  generator = _generator(model, tuple(sorted(tokenizer.stop_ids)), tokenizer.pad_id)
  generator.params = split_layers(params)
  ids = [tokenizer.encode_chat([{'role': r, 'content': c} for r, c in messages], True)
         for messages in prompts]
  answers = []
  for start in range(0, len(ids), batch):
    for tokens in generator.generate(ids[start:start + batch], max_new_tokens, Sampling()):
      answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
  return answers


def generative_scores(answers: Sequence[str], references: Sequence) -> dict[str, float]:
  """answer_exact_match and answer_f1 of generated answers (metrics' normalisation)."""
  return {'answer_exact_match': answer_exact_match(answers, references),
          'answer_f1': answer_f1(answers, references)}


def _row_length(examples: Sequence[TextExample], length: int) -> int:
  """`length`, or the longest example's length rounded up to a multiple of 64."""
  longest = max((len(e.prompt) + len(e.completion) for e in examples), default=0)
  return max(length, -(-longest // 64) * 64)


def evaluate_text(model: Decoder, params, data: TextData, rows: int
                  ) -> dict[str, dict[str, float]]:
  """task -> its metrics (tasks.text) on its validation set, for every task of `data`,
  trained and held-out; and GENERAL -> loss and bits per byte of data's general text. Rows are data's training length, or longer when an example is: no
  evaluation example is truncated."""
  tokenizer, results = data.tokenizer, {}
  with progress.bar(len(data.eval), 'evaluate', unit='task') as bar:
    for name, scored in data.eval.items():
      task, conversations = scored.task, scored.conversations
      examples = [tokenize(tokenizer, c, {c.task: 0}) for c in conversations]
      length = _row_length(examples, data.settings.seq_len)
      nll = score_completions(model, params, examples, rows, length)
      inputs = {'nats': nll.nats, 'tokens': nll.tokens,
                'bytes': [completion_bytes(tokenizer, e) for e in examples]}
      prompts = [c.messages[:-1] for c in conversations]
      if any(m in task.metrics for m in RANKED):
        inputs['loglikelihoods'], inputs['option_bytes'] = option_loglikelihoods(
            model, params, tokenizer, prompts, scored.options, rows, length)
        inputs['label'] = np.asarray(scored.labels)
      if any(m in task.metrics for m in GENERATED):
        inputs['text'] = generated_answers(model, params, tokenizer, prompts,
                                           data.settings.max_new_tokens)
        inputs['references'] = [c.messages[-1][1] for c in conversations]
      results[name] = compute_metrics(task.metrics, inputs)
      bar.update()
  if data.general is not None:
    examples = [TextExample(0, (), window) for window in data.general.windows]
    nll = score_completions(model, params, examples, rows, data.settings.seq_len)
    results[GENERAL] = compute_metrics(LIKELIHOOD, {'nats': nll.nats, 'tokens': nll.tokens,
                                                    'bytes': [data.general.bytes]})
  return results
