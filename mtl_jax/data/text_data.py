"""A text run's data (config.text.enabled): every task as text-to-text conversations, the
training mixture over the trained tasks, and the validation sets of the trained and the
held-out tasks.

A task of the run is, by its name:
  a registered task or a config.data.local task  its labelled examples (the sources the
      classification pipeline reads: the built-in suite, TFDS, local files) in instruction
      templates (data/instructions.py; config.text.templates replaces a task's defaults)
  'chatterbot_<language>'  the chatterbot corpus's examples in that language
  any other name  the lines of config.text.jsonl's files that name it ('train' and
      'validation' files; a line naming a task outside the run is an error, file:line)

A chatterbot language has no validation split: a conversation goes to validation when
crc32 of its file and index is 0 mod VALIDATION_EVERY, so none of its turns is trained on.
Each task is scored on the first config.text.eval_examples of its validation examples.

TextData serves a fit as TaskData does: `train_names`, `vocab_size`, `batches` (each step's
examples drawn, rendered and packed: data/text_batches.py) and `view` (one task's STL run).
Held-out tasks (config.text.held_out) are never trained; every fit scores them, zero-shot,
and the loss of config.text.general, a body of text no task trains on (forgetting).
"""

import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import grain
import jax
import ml_collections
import numpy as np

from mtl_jax import tasks as task_lib
from mtl_jax.data import local_source
from mtl_jax.data.instructions import (Template, Templated, check_templates, default_templates,
                                       ranked_options)
from mtl_jax.data.llm_tokenizer import LlmTokenizer, load_llm_tokenizer
from mtl_jax.data.mixture import mixture_probabilities
from mtl_jax.data.packing import PackStats
from mtl_jax.data.pipeline import labelled_examples
from mtl_jax.data.text_batches import TextBatches, TextMixture, mixture_of
from mtl_jax.data.text_sources import (CHATTERBOT_PREFIX, Conversation, chatterbot_conversations,
                                       read_jsonl)
from mtl_jax.tasks.spec import Task
from mtl_jax.tasks.text import HAS_OPTIONS, RANKED, text_task

VALIDATION_EVERY = 10  # a chatterbot conversation's share of validation: 1 in this many
JSONL_SPLITS = ('train', 'validation')  # the keys of config.text.jsonl
LOSS_MEANS = ('tokens', 'examples')  # config.text.loss_mean
CHATTERBOT_SOURCE, JSONL_SOURCE = 'chatterbot-corpus', 'jsonl'  # the specs' sources
GENERAL = 'general_text'  # config.text.general's name among a fit's scores


class TextEvalSet(NamedTuple):
  """A task's scored validation examples; a ranked task's options and right option."""
  task: Task
  conversations: tuple[Conversation, ...]
  options: tuple[tuple[str, ...], ...] | None = None
  labels: tuple[int, ...] | None = None


class TextSettings(NamedTuple):
  """config.text's settings of the training batches and of evaluation."""
  seq_len: int
  examples_per_step: int
  train_on_prompt: bool
  per_example: bool  # config.text.loss_mean == 'examples'
  max_new_tokens: int
  grouped: bool  # config.sampling.strategy == 'grouped': task i's examples in group i's rows


class GeneralText(NamedTuple):
  """config.text.general: a body of text no task trains on, whose loss before and after
  training measures forgetting. Its tokens are cut into windows of the rows' length that
  overlap by one token, so every token but the first is predicted exactly once."""
  path: str
  windows: tuple[tuple[int, ...], ...]
  bytes: int  # UTF-8 bytes of the scored text


class TextData(NamedTuple):
  """What a text fit trains and is scored on (module docstring)."""
  mixture: TextMixture  # the trained tasks, in the run's order
  eval: dict[str, TextEvalSet]  # task -> its validation set: trained tasks, then held-out
  tokenizer: LlmTokenizer
  settings: TextSettings
  skipped: tuple[str, ...] = ()  # 'file:line: reason' of each malformed JSONL line skipped
  target_scales: dict | None = None  # no regression targets: a text task writes tokens
  general: GeneralText | None = None

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.mixture.tasks

  @property
  def train_names(self) -> tuple[str, ...]:
    return self.mixture.tasks

  @property
  def held_out(self) -> tuple[str, ...]:
    return tuple(name for name in self.eval if name not in self.mixture.tasks)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def view(self, task: str) -> 'TextData':
    """What `task` alone trains on (all of its examples), scored with the held-out tasks."""
    index = self.mixture.tasks.index(task)
    mixture = mixture_of({task: self.mixture.sources[index]}, np.ones(1))
    return self._replace(mixture=mixture, eval={name: self.eval[name]
                                                for name in (task, *self.held_out)})

  def step_batches(self, seed: int, rows: int) -> TextBatches:
    s = self.settings
    return TextBatches(self.mixture, self.tokenizer, seed, rows, s.seq_len,
                       s.examples_per_step, s.train_on_prompt, s.per_example, s.grouped)

  def batches(self, seed: int, batch_size: int, start_step: int, num_steps: int,
              positions: np.ndarray | None = None) -> Iterator[dict]:
    """The packed batches of steps [start_step, num_steps), this process's rows
    (`positions`, default all), prefetched in a background thread."""
    make = self.step_batches(seed, batch_size)
    positions = np.arange(batch_size) if positions is None else positions
    at = lambda step: jax.tree.map(lambda a: a[positions], make(step)[0])
    steps = grain.MapDataset.range(start_step, num_steps).map(at)
    return iter(steps.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def packing_stats(data: TextData, seed: int, batch_size: int, steps: range) -> PackStats:
  """The packing of `steps`' batches, summed: what was kept, dropped and truncated."""
  make = data.step_batches(seed, batch_size)
  return PackStats(*np.sum([make(step)[1] for step in steps], axis=0).tolist())


def _validation_conversation(conversation: Conversation) -> bool:
  """Whether a chatterbot example's conversation is in validation (module docstring)."""
  key = conversation.where.rsplit(', turn', 1)[0]
  return zlib.crc32(key.encode()) % VALIDATION_EVERY == 0


def _templates(text_cfg: ml_collections.ConfigDict, task: Task) -> tuple[Template, ...]:
  """config.text.templates[task] ([prompt, completion] pairs, or [prompt] with the completion
  '{answer}'), else the task kind's defaults; checked against the task's fields."""
  given = text_cfg.templates.get(task.name)
  if given is None:
    return default_templates(task)
  templates = tuple(Template(*pair) for pair in given)
  check_templates(task, templates)
  return templates


def registered_spec(data_cfg: ml_collections.ConfigDict, name: str) -> Task | None:
  """The labelled task `name` (config.data.local's, else the registry's), or None."""
  local = local_source.local_specs(data_cfg)
  if name in local:
    return local_source.local_task(name, local[name])
  return task_lib.get(name) if name in task_lib.names() else None


def text_spec(config: ml_collections.ConfigDict, name: str) -> Task:
  """The TaskKind.TEXT spec of task `name` of a text run (module docstring: its source)."""
  generated = config.text.max_new_tokens > 0
  labelled = registered_spec(config.data, name)
  if labelled is not None:
    return text_task(name, labelled.source, labelled.kind in HAS_OPTIONS, generated)
  if name.startswith(CHATTERBOT_PREFIX):
    return text_task(name, CHATTERBOT_SOURCE, False, generated)
  return text_task(name, JSONL_SOURCE, False, generated)


def general_text(path: str, tokenizer: LlmTokenizer, length: int, max_windows: int
                 ) -> GeneralText:
  """The first `max_windows` windows of the text file at `path` (GeneralText)."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'config.text.general: {path}: {e}') from e
  tokens = tokenizer.encode(text, add_special_tokens=False)
  if len(tokens) < 2:
    raise ValueError(f'config.text.general: {path} holds {len(tokens)} token(s); forgetting '
                     f'is measured on at least two.')
  stride = length - 1
  starts = range(0, len(tokens) - 1, stride)[:max_windows]
  windows = tuple(tuple(tokens[start:start + length]) for start in starts)
  scored = tokens[:starts[-1] + len(windows[-1])]
  return GeneralText(path, windows, len(tokenizer.decode(scored).encode('utf-8')))


def load_text_data(config: ml_collections.ConfigDict, held_out: Sequence[str] = ()) -> TextData:
  """The text run's data: config.tasks trained, `held_out` only scored (module docstring).
  Every example is read now (a TFDS training split stays unread until drawn), so a bad line
  or a task without examples fails before training starts."""
  text_cfg, seed = config.text, config.seed
  names = (*config.tasks, *held_out)
  specs = {name: text_spec(config, name) for name in names}
  labelled = {name: spec for name in names
              if (spec := registered_spec(config.data, name)) is not None}
  train: dict[str, Sequence[Conversation]] = {name: [] for name in names}
  validation: dict[str, Sequence[Conversation]] = {name: [] for name in names}
  options: dict[str, tuple] = {}

  for name, labelled_set in labelled_examples(config.data, tuple(labelled.values())).items():
    task = labelled[name]
    templates = _templates(text_cfg, task)
    train[name] = Templated(task, labelled_set.train, seed, templates, f'{task.source} train')
    scored = labelled_set.validation[:text_cfg.eval_examples]
    validation[name] = Templated(task, scored, seed, templates, f'{task.source} validation')
    if specs[name].metrics[0] in RANKED:
      options[name] = (tuple(ranked_options(task, ex, i, seed, templates)
                             for i, ex in enumerate(scored)),
                       tuple(int(ex.labels[name]) for ex in scored))

  languages = [n[len(CHATTERBOT_PREFIX):] for n in names
               if n.startswith(CHATTERBOT_PREFIX) and n not in labelled]
  for language, examples in (chatterbot_conversations(languages) if languages else {}).items():
    name = CHATTERBOT_PREFIX + language
    train[name] = [c for c in examples if not _validation_conversation(c)]
    validation[name] = [c for c in examples if _validation_conversation(c)]

  skipped = []
  for split, paths in text_cfg.jsonl.items():
    for path in paths:
      read, bad = read_jsonl(path, names, config.data.bad_rows)
      skipped.extend(bad)
      for conversation in read:
        if conversation.task in labelled or conversation.task in languages:
          raise ValueError(f'{conversation.where}: task {conversation.task!r} reads its '
                           f'examples from its own source, not from config.text.jsonl.')
        (train if split == 'train' else validation)[conversation.task].append(conversation)

  unscored = [name for name in names if not len(validation[name])]
  if unscored:
    raise ValueError(f'Tasks {unscored} have no validation examples to score them on.')
  trained = {name: train[name] for name in config.tasks}
  sizes = [len(examples) for examples in trained.values()]
  if not all(sizes):
    mixture_of(trained, np.ones(len(sizes)))  # raises, naming the tasks without examples
  grouped = config.sampling.strategy == 'grouped'  # every task's share is fixed, equal
  probabilities = mixture_probabilities(sizes, 'uniform' if grouped else
                                        config.sampling.strategy, config.sampling.temperature,
                                        config.sampling.cap)
  evals = {}
  for name in names:
    scored = tuple(validation[name][i]
                   for i in range(min(len(validation[name]), text_cfg.eval_examples)))
    ranked = options.get(name, (None, None))
    evals[name] = TextEvalSet(specs[name], scored, *ranked)
  settings = TextSettings(config.data.seq_len, text_cfg.examples_per_step,
                          text_cfg.train_on_prompt, text_cfg.loss_mean == 'examples',
                          text_cfg.max_new_tokens, grouped)
  mixture = mixture_of(trained, probabilities, config.sampling.get('schedule', ()))
  tokenizer = load_llm_tokenizer(config.data.vocabulary)
  general = (general_text(text_cfg.general, tokenizer, config.data.seq_len,
                          text_cfg.eval_examples) if text_cfg.general else None)
  return TextData(mixture, evals, tokenizer, settings, tuple(skipped), None, general)


def text_specs(data: TextData) -> tuple[Task, ...]:
  """The specs of the trained tasks, in the run's order (what the model learns)."""
  return tuple(data.eval[name].task for name in data.mixture.tasks)
