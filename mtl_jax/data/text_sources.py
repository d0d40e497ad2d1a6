"""Text-to-text examples as conversations, from JSONL files and from the chatterbot corpus.

A Conversation is a task's name, its messages as (role, content) pairs and where it came
from. Roles are 'system', 'user' and 'assistant'; the last message is the assistant's reply,
the completion that is learnt, and every message before it is the prompt.

JSONL files hold one JSON object per line, in one of two forms:

  {"task": "qa", "prompt": "...", "completion": "..."}       one exchange; an optional
                                                           "system" string goes first
  {"task": "qa", "messages": [{"role": "user", "content": "..."}, ...]}

Other fields of the object are ignored. A malformed line (not JSON, a missing or non-text
field, both forms or neither, a message other than {role, content} strings, an unknown role,
a conversation that does not end with the assistant's reply, has no user message or a system
message after the first, an empty completion, a task outside the given list, bytes that are
not UTF-8) is an error naming file:line, or is skipped and counted with bad_rows='skip'.

The chatterbot corpus (pip package `chatterbot-corpus`, BSD) holds dialogs in 28 languages,
chatterbot_corpus/data/<language>/<category>.yml, each file {categories: [...],
conversations: [[turn, turn, ...], ...]}. Its turns alternate between two speakers, so a
conversation of k turns gives k - 1 one-exchange examples: example j is turn j as the user's
message and turn j + 1 as the assistant's reply. Each turn is the reply once and the prompt
once, and no example asks the model to speak for the user (a longer history would make every
second example's earlier turns the assistant's own, under the wrong role). A language's
examples are the task `chatterbot_<language>`. A category is a file's name without .yml
(the files' own `categories` lists are in their language, or absent).
"""

import functools
import importlib.util
import json
import os
import re
from collections.abc import Iterable
from typing import NamedTuple

import yaml

ROLES = ('system', 'user', 'assistant')
BAD_ROWS = ('error', 'skip')
CHATTERBOT_PREFIX = 'chatterbot_'
CHATTERBOT_PACKAGE = 'chatterbot_corpus'
# Bytes that are not UTF-8 survive decoding with errors='surrogateescape' as U+DC80..U+DCFF.
_UNDECODABLE = re.compile('[\udc80-\udcff]')


class Conversation(NamedTuple):
  """A text-to-text example: `messages[-1]` is the assistant's reply (the completion that is
  learnt), the messages before it the prompt. `where` names its source for error messages:
  'data/x.jsonl:12' or 'chatterbot-corpus english/trivia.yml, conversation 3, turn 2'."""
  task: str
  messages: tuple[tuple[str, str], ...]
  where: str


class BadRow(ValueError):
  """A malformed line; the reader adds file:line."""


def _text(record: dict, field: str, what: str = '') -> str:
  if field not in record:
    raise BadRow(f'no field {field!r}{what}')
  value = record[field]
  if not isinstance(value, str):
    raise BadRow(f'field {field!r}{what} is {type(value).__name__}, not text')
  if _UNDECODABLE.search(value):
    raise BadRow(f'field {field!r}{what} is not valid UTF-8')
  return value


def _messages(record: dict) -> tuple[tuple[str, str], ...]:
  """The (role, content) pairs of one JSONL record, checked."""
  has_prompt = 'prompt' in record or 'completion' in record
  if has_prompt == ('messages' in record):
    raise BadRow('give "prompt" and "completion", or "messages"; not both, not neither')
  if has_prompt:
    messages = [('user', _text(record, 'prompt')), ('assistant', _text(record, 'completion'))]
    if 'system' in record:
      messages.insert(0, ('system', _text(record, 'system')))
  else:
    if 'system' in record:
      raise BadRow('"system" goes with "prompt" and "completion"; with "messages", make the '
                   'system message the first one')
    listed = record['messages']
    if not isinstance(listed, list) or not listed:
      raise BadRow('"messages" is not a non-empty list')
    messages = []
    for i, message in enumerate(listed):
      if not isinstance(message, dict) or set(message) != {'role', 'content'}:
        raise BadRow(f'message {i} is not an object of "role" and "content"')
      role, content = (_text(message, k, f' of message {i}') for k in ('role', 'content'))
      if role not in ROLES:
        raise BadRow(f'message {i} has role {role!r}, not one of {list(ROLES)}')
      messages.append((role, content))
  roles = [role for role, _ in messages]
  if roles[-1] != 'assistant':
    raise BadRow(f'the last message is the {roles[-1]}\'s; it must be the assistant\'s reply')
  if 'user' not in roles:
    raise BadRow('no user message')
  if 'system' in roles[1:]:
    raise BadRow('a system message after the first message')
  if not messages[-1][1].strip():
    raise BadRow('the completion (the last message) is empty')
  return tuple(messages)


def read_jsonl(path: str, tasks: Iterable[str] | None = None, bad_rows: str = 'error'
               ) -> tuple[list[Conversation], tuple[str, ...]]:
  """(conversations, 'file:line: reason' of each skipped line) of a JSONL file.

  `tasks`, when given, are the tasks a line may name. Blank lines are skipped silently.
  """
  if bad_rows not in BAD_ROWS:
    raise ValueError(f'bad_rows: {bad_rows!r} is not one of {BAD_ROWS}.')
  known = None if tasks is None else tuple(tasks)
  conversations, skipped = [], []
  try:
    f = open(path, encoding='utf-8', errors='surrogateescape')
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such file.') from None
  with f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise BadRow(f'not valid JSON ({e.msg})') from None
        if not isinstance(record, dict):
          raise BadRow(f'a JSON {type(record).__name__}, not an object')
        task = _text(record, 'task')
        if known is not None and task not in known:
          raise BadRow(f'task {task!r} is not one of {sorted(known)}')
        conversations.append(Conversation(task, _messages(record), f'{path}:{line_no}'))
      except BadRow as e:
        where = f'{path}:{line_no}: {e}'
        if bad_rows == 'error':
          raise ValueError(f'{where} (bad_rows=\'skip\' skips and counts such lines).') from None
        skipped.append(where)
  return conversations, tuple(skipped)


def chatterbot_data_dir() -> str:
  """The installed chatterbot-corpus's data folder, found without importing the package."""
  spec = importlib.util.find_spec(CHATTERBOT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f'the chatterbot corpus is not installed (package {CHATTERBOT_PACKAGE!r});'
                      ' pip install -r requirements.txt installs it.')
  return os.path.join(list(spec.submodule_search_locations)[0], 'data')


def _corpus_files(data_dir: str | None) -> dict[str, dict[str, str]]:
  """language -> category -> YAML file, sorted."""
  data_dir = chatterbot_data_dir() if data_dir is None else data_dir
  files = {}
  for language in sorted(os.listdir(data_dir)):
    folder = os.path.join(data_dir, language)
    if os.path.isdir(folder):
      names = sorted(n for n in os.listdir(folder) if n.endswith('.yml'))
      if names:
        files[language] = {n[:-len('.yml')]: os.path.join(folder, n) for n in names}
  return files


def chatterbot_languages(data_dir: str | None = None) -> tuple[str, ...]:
  """The installed corpus's languages, sorted ('bengali', ..., 'yoruba')."""
  return tuple(_corpus_files(data_dir))


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + '...'


def _turn(value) -> str | None:
  """A turn's text, stripped: a YAML number, boolean or date as str(value) (1963 unquoted ->
  '1963', but 1.50 -> '1.5' and yes -> 'True'); None when it is not a scalar or is empty."""
  if value is None or isinstance(value, (list, dict)):
    return None
  return (value if isinstance(value, str) else str(value)).strip() or None


@functools.lru_cache(maxsize=None)
def _read_corpus_file(path: str, name: str, task: str
                      ) -> tuple[tuple[Conversation, ...], tuple[str, ...]]:
  """(examples, 'where: reason' of each turn or conversation left out) of one YAML file, read
  once per process. An example's `where` numbers its conversation and its reply's turn from 1.
  """
  source = f'chatterbot-corpus {name}'
  try:
    with open(path, encoding='utf-8') as f:
      document = yaml.safe_load(f)
  except yaml.YAMLError as e:
    raise ValueError(f'{source}: not valid YAML ({" ".join(str(e).split())}).') from None
  listed = document.get('conversations') if isinstance(document, dict) else None
  if not isinstance(listed, list):
    raise ValueError(f'{source}: not a mapping with a list of conversations.')
  examples, skipped = [], []
  for c, turns in enumerate(listed, 1):
    where = f'{source}, conversation {c}'
    if not isinstance(turns, list):
      skipped.append(f'{where}: a {type(turns).__name__}, not a list of turns: '
                     f'{_short(turns)}')
      continue
    if len(turns) < 2:
      skipped.append(f'{where}: {len(turns)} turn(s), nothing answers it')
      continue
    texts = [_turn(t) for t in turns]
    for t, (value, text) in enumerate(zip(turns, texts), 1):
      if text is None:
        skipped.append(f'{where}, turn {t}: {type(value).__name__} {_short(value)} is not '
                       f'text; its exchanges are left out')
    for j in range(len(turns) - 1):
      if texts[j] is not None and texts[j + 1] is not None:
        examples.append(Conversation(task, (('user', texts[j]), ('assistant', texts[j + 1])),
                                     f'{where}, turn {j + 2}'))
  return tuple(examples), tuple(skipped)


def _chosen(data_dir, languages, categories) -> list[tuple[str, str, str]]:
  """(language, category, file) of the files the filters choose; an unknown name is named."""
  files = _corpus_files(data_dir)
  if languages is not None:
    languages = tuple(languages)
    unknown = [x for x in languages if x not in files]
    if unknown:
      raise ValueError(f'chatterbot-corpus: unknown language(s) {unknown}; known: '
                       f'{list(files)}.')
    files = {x: files[x] for x in sorted(set(languages))}
  if categories is not None:
    categories = tuple(categories)
    known = sorted({c for by_category in files.values() for c in by_category})
    unknown = [x for x in categories if x not in known]
    if unknown:
      raise ValueError(f'chatterbot-corpus: unknown category(ies) {unknown} in the chosen '
                       f'language(s); known: {known}.')
  return [(language, category, path) for language, by_category in files.items()
          for category, path in by_category.items()
          if categories is None or category in categories]


def _read_corpus(languages, categories, data_dir):
  chosen = {}
  for language, category, path in _chosen(data_dir, languages, categories):
    examples, skipped = _read_corpus_file(path, f'{language}/{category}.yml',
                                          CHATTERBOT_PREFIX + language)
    examples_of, skipped_of = chosen.setdefault(language, ([], []))
    examples_of.extend(examples)
    skipped_of.extend(skipped)
  return chosen


def chatterbot_conversations(languages: Iterable[str] | None = None,
                             categories: Iterable[str] | None = None,
                             data_dir: str | None = None) -> dict[str, list[Conversation]]:
  """language -> its one-exchange examples (task 'chatterbot_<language>'), in file order.

  All languages and categories by default. A language with no file of the chosen categories
  is left out. A turn that is not text (a list, a mapping, empty) is left out with the two
  examples it belongs to, and a conversation that is not a list of two or more turns is left
  out whole: `chatterbot_skipped` lists them. `data_dir` replaces the installed corpus (a
  folder of <language>/<category>.yml files).
  """
  return {language: examples
          for language, (examples, _) in _read_corpus(languages, categories, data_dir).items()
          if examples}


def chatterbot_skipped(languages: Iterable[str] | None = None,
                       categories: Iterable[str] | None = None,
                       data_dir: str | None = None) -> list[str]:
  """'where: reason' of each turn and conversation that chatterbot_conversations leaves out."""
  return [s for _, skipped in _read_corpus(languages, categories, data_dir).values()
          for s in skipped]
