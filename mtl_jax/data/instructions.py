"""Instruction templates: a labelled example of any task becomes a text-to-text conversation,
and a conversation becomes prompt and completion token ids through the model's own chat
template.

Templates (FLAN style) are derived from the task's spec alone, so a classification task
needs no hand-written text-to-text version: its kind, input fields and label names say what
to ask and what the options are. Each kind has several templates, some listing the options
and one zero-shot instruction without them. A config may give a task its own templates
instead. A template is a pair of `str.format` strings over these fields:

  task            the task's name, underscores as spaces ('glue sst2')
  text / first    the first input (a word list joined by spaces); `second` the second
  <input field>   each input by its field name (e.g. premise, hypothesis, words_a)
  options         the label names (a multiple-choice task: the candidates' last texts),
                  one per line as '- name'; `options_inline` as 'a, b or c'
  answer          the label's name; a regression target to 2 decimals; a tagging task's
                  tags, one per word, space-separated; a multiple-choice task's right option

Which template an example gets is a seeded, documented rule, the same on every process and
in every run with that seed: template_index = crc32('{seed}/{task}/{example index}') mod the
number of templates.

Rendering (`tokenize`): the prompt is the chat template over every message but the last,
with the generation prompt; the completion is what the template renders after it for the
last (assistant) message, up to and including the end-of-turn token (which is learnt: the
model must learn to stop), without what the template writes after it (a newline). A chat
template whose full rendering does not start with its prompt rendering is refused, naming it.
"""

import string
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mtl_jax.data.features import Example
from mtl_jax.data.llm_tokenizer import LlmTokenizer
from mtl_jax.data.packing import TextExample
from mtl_jax.data.text_sources import Conversation
from mtl_jax.tasks.spec import Task, TaskKind


class Template(NamedTuple):
  prompt: str
  completion: str = '{answer}'


OPTIONS = 'OPTIONS:\n{options}'
TEMPLATES = {
    (TaskKind.CLASSIFICATION, 1): (
        Template('{text}\n\nWhat is the {task} of this text?\n' + OPTIONS),
        Template('Text: {text}\n\nChoose the {task} of the text: {options_inline}.'),
        Template('What {task} does the following text have?\n\n{text}'),
    ),
    (TaskKind.CLASSIFICATION, 2): (
        Template('First: {first}\nSecond: {second}\n\nWhat is the {task} of this pair?\n'
                 + OPTIONS),
        Template('{first}\n\n{second}\n\nChoose the {task} of the two texts above: '
                 '{options_inline}.'),
        Template('What is the {task} between "{first}" and "{second}"?'),
    ),
    (TaskKind.REGRESSION, 1): (
        Template('{text}\n\nGive the {task} of this text as a number.'),
        Template('What is the {task} score of the following text?\n\n{text}'),
    ),
    (TaskKind.REGRESSION, 2): (
        Template('First: {first}\nSecond: {second}\n\nGive the {task} of this pair as a '
                 'number.'),
        Template('What is the {task} score between "{first}" and "{second}"?'),
    ),
    (TaskKind.TAGGING, 1): (
        Template('Give the {task} tag of each word, in order.\n\n{text}\n\nTags:\n' + OPTIONS),
        Template('{text}\n\nTag every word of the text above with its {task}.'),
    ),
    (TaskKind.MULTIPLE_CHOICE, 1): (
        Template('{text}\n\nWhich option is right?\n' + OPTIONS),
        Template('{text}\n\nChoose one: {options_inline}.'),
    ),
}


def _text(value) -> str:
  return ' '.join(value) if isinstance(value, list) else str(value)


def _inline(names: Sequence[str]) -> str:
  return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} or {names[-1]}'


def default_templates(task: Task) -> tuple[Template, ...]:
  """The templates of the task's kind and input count."""
  inputs = 1 if task.kind is TaskKind.MULTIPLE_CHOICE else len(task.input_fields)
  return TEMPLATES[task.kind, inputs]


def option_names(task: Task, example: Example) -> list[str]:
  """The options of `example`: a multiple-choice task's candidates (their last texts), else
  the task's label names (a tagging task's tags; none for regression)."""
  if task.kind is TaskKind.MULTIPLE_CHOICE:
    return [_text(choice[-1]) for choice in example.choices]
  return list(task.label_names)


def fields(task: Task, example: Example) -> dict[str, str]:
  """The values a template may use for `example` of `task` (the module docstring)."""
  label = example.labels[task.name]
  options = option_names(task, example)
  if task.kind is TaskKind.MULTIPLE_CHOICE:
    context = [_text(x) for x in example.choices[0][:-1]]
    out = {'text': '\n'.join(context), 'answer': options[label]}
  else:
    texts = [_text(x) for x in example.inputs]
    out = dict(zip(task.input_fields, texts))
    out.update(text=texts[0], first=texts[0])
    if len(texts) > 1:
      out['second'] = texts[1]
    if task.kind is TaskKind.REGRESSION:
      out['answer'] = f'{float(label):.2f}'
    elif task.kind is TaskKind.TAGGING:
      out['answer'] = ' '.join(task.label_names[t] for t in label)
    else:
      out['answer'] = task.label_names[label]
  out.update(task=task.name.replace('_', ' '), options='\n'.join(f'- {o}' for o in options),
             options_inline=_inline(options) if options else '')
  return out


def _names(template: Template) -> set[str]:
  return {name for part in template for _, name, _, _ in string.Formatter().parse(part)
          if name is not None}


def check_templates(task: Task, templates: Sequence[Template]) -> None:
  """ValueError naming the task and template when a template uses a field the task's
  examples do not have, or none is given."""
  if not templates:
    raise ValueError(f'task {task.name!r}: no instruction templates.')
  known = {'task', 'text', 'first', 'options', 'options_inline', 'answer', *task.input_fields}
  if task.kind is not TaskKind.MULTIPLE_CHOICE and len(task.input_fields) > 1:
    known.add('second')
  for i, template in enumerate(templates):
    unknown = sorted(_names(template) - known)
    if unknown:
      raise ValueError(f'task {task.name!r}, template {i} ({template.prompt[:40]!r}...): '
                       f'refers to {unknown}, which its examples do not have (fields: '
                       f'{sorted(known)}).')
    if not template.completion.strip():
      raise ValueError(f'task {task.name!r}, template {i}: the completion is empty.')


def template_index(seed: int, task: str, index: int, count: int) -> int:
  """The template of example `index` of `task` (the module docstring's rule)."""
  return zlib.crc32(f'{seed}/{task}/{index}'.encode()) % count


def as_conversation(task: Task, example: Example, index: int, seed: int,
                    templates: Sequence[Template], where: str) -> Conversation:
  """Example `index` of `task`, labelled, as a one-exchange conversation in its template."""
  template = templates[template_index(seed, task.name, index, len(templates))]
  values = fields(task, example)
  return Conversation(task.name, (('user', template.prompt.format(**values)),
                                  ('assistant', template.completion.format(**values))), where)


def ranked_options(task: Task, example: Example, index: int, seed: int,
                   templates: Sequence[Template]) -> tuple[str, ...]:
  """The replies rank classification chooses among for example `index` of `task`: its
  template's completion with each option as the answer (the right one is the label's)."""
  template = templates[template_index(seed, task.name, index, len(templates))]
  values = fields(task, example)
  return tuple(template.completion.format(**{**values, 'answer': option})
               for option in option_names(task, example))


class Templated(Sequence):
  """A task's labelled examples as conversations in its templates (as_conversation), each
  rendered when it is indexed."""

  def __init__(self, task: Task, examples: Sequence[Example], seed: int,
               templates: Sequence[Template], where: str):
    self.task, self.examples, self.seed = task, examples, seed
    self.templates, self.where = tuple(templates), where

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> Conversation:
    return as_conversation(self.task, self.examples[index], index, self.seed, self.templates,
                           f'{self.where}, example {index}')


def tokenize(tokenizer: LlmTokenizer, conversation: Conversation,
             task_index: Mapping[str, int]) -> TextExample:
  """The conversation's prompt and completion ids (the module docstring's rendering)."""
  messages = [{'role': role, 'content': content} for role, content in conversation.messages]
  prompt = tokenizer.encode_chat(messages[:-1], add_generation_prompt=True)
  full = tokenizer.encode_chat(messages, add_generation_prompt=False)
  if full[:len(prompt)] != prompt:
    raise ValueError(f'{conversation.where}: the chat template of {tokenizer.source} does not '
                     f'render the reply after the prompt it renders for generation, so the '
                     f'reply\'s tokens cannot be told from the prompt\'s.')
  completion = full[len(prompt):]
  end = tokenizer.end_of_turn_id
  if end not in completion:
    raise ValueError(f'{conversation.where}: the chat template of {tokenizer.source} ends the '
                     f'reply with no end-of-turn token ({tokenizer.end_of_turn!r}).')
  last = len(completion) - completion[::-1].index(end)
  return TextExample(task_index[conversation.task], tuple(prompt), tuple(completion[:last]))
