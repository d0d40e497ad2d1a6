"""Text-to-text sources (mtl_jax/data/text_sources.py): JSONL conversations in both forms and
every malformed line named by file:line (or skipped and counted), and the chatterbot corpus
counted against an independent reading of its YAML files."""

import json
import os

import pytest
import yaml

from mtl_jax.data import text_sources
from mtl_jax.data.text_sources import CHATTERBOT_PREFIX, Conversation, read_jsonl


def write_lines(tmp_path, lines, name='data.jsonl'):
  path = tmp_path / name
  path.write_text(''.join((x if isinstance(x, str) else json.dumps(x)) + '\n' for x in lines),
                  encoding='utf-8')
  return str(path)


def test_jsonl_both_forms_system_message_and_blank_lines(tmp_path):
  path = write_lines(tmp_path, [
      {'task': 'qa', 'prompt': 'Who?', 'completion': 'Me.', 'id': 7},
      '',
      {'task': 'qa', 'system': 'Be brief.', 'prompt': 'Why?', 'completion': 'Because.'},
      '   ',
      {'task': 'chat', 'messages': [
          {'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'Hi'},
          {'role': 'assistant', 'content': 'Hello'}, {'role': 'user', 'content': 'Bye'},
          {'role': 'assistant', 'content': 'Goodbye'}]},
  ])
  conversations, skipped = read_jsonl(path)
  assert skipped == ()
  assert conversations == [
      Conversation('qa', (('user', 'Who?'), ('assistant', 'Me.')), f'{path}:1'),
      Conversation('qa', (('system', 'Be brief.'), ('user', 'Why?'), ('assistant', 'Because.')),
                   f'{path}:3'),
      Conversation('chat', (('system', 'Be kind.'), ('user', 'Hi'), ('assistant', 'Hello'),
                            ('user', 'Bye'), ('assistant', 'Goodbye')), f'{path}:5'),
  ]


def msgs(*pairs):
  return [{'role': r, 'content': c} for r, c in pairs]


BAD_LINES = [
    ('{"task": "qa", "prompt": ', 'not valid JSON'),
    ('[1, 2]', 'a JSON list, not an object'),
    ({'prompt': 'a', 'completion': 'b'}, "no field 'task'"),
    ({'task': 3, 'prompt': 'a', 'completion': 'b'}, "field 'task' is int, not text"),
    ({'task': 'qa', 'prompt': 'a'}, "no field 'completion'"),
    ({'task': 'qa', 'prompt': ['a'], 'completion': 'b'}, "field 'prompt' is list, not text"),
    ({'task': 'qa', 'prompt': 'a', 'completion': 'b', 'system': None},
     "field 'system' is NoneType, not text"),
    ({'task': 'qa', 'prompt': 'a', 'completion': 'b', 'messages': msgs(('user', 'a'))},
     'not both, not neither'),
    ({'task': 'qa'}, 'not both, not neither'),
    ({'task': 'qa', 'messages': 'hi'}, '"messages" is not a non-empty list'),
    ({'task': 'qa', 'messages': []}, '"messages" is not a non-empty list'),
    ({'task': 'qa', 'messages': [['user', 'a']]}, 'message 0 is not an object of "role"'),
    ({'task': 'qa', 'messages': [{'role': 'user'}]}, 'message 0 is not an object of "role"'),
    ({'task': 'qa', 'messages': [{'role': 'user', 'content': 'a', 'name': 'x'}]},
     'message 0 is not an object of "role"'),
    ({'task': 'qa', 'messages': [{'role': 'user', 'content': 5}]},
     "field 'content' of message 0 is int, not text"),
    ({'task': 'qa', 'messages': msgs(('user', 'a'), ('bot', 'b'))},
     "message 1 has role 'bot', not one of ['system', 'user', 'assistant']"),
    ({'task': 'qa', 'messages': msgs(('user', 'a'), ('assistant', 'b'), ('user', 'c'))},
     "the last message is the user's"),
    ({'task': 'qa', 'messages': msgs(('system', 'a'), ('assistant', 'b'))}, 'no user message'),
    ({'task': 'qa', 'messages': msgs(('user', 'a'), ('system', 'b'), ('assistant', 'c'))},
     'a system message after the first message'),
    ({'task': 'qa', 'system': 's', 'messages': msgs(('user', 'a'), ('assistant', 'b'))},
     'make the system message the first one'),
    ({'task': 'qa', 'prompt': 'a', 'completion': ' \n'}, 'the completion (the last message) is '
     'empty'),
    ({'task': 'qb', 'prompt': 'a', 'completion': 'b'}, "task 'qb' is not one of ['qa', 'x']"),
]


@pytest.mark.parametrize('line, message', BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
  good = {'task': 'qa', 'prompt': 'a', 'completion': 'b'}
  path = write_lines(tmp_path, [good, '', line])
  with pytest.raises(ValueError) as e:
    read_jsonl(path, tasks=('x', 'qa'))
  assert str(e.value).startswith(f'{path}:3: ')
  assert message in str(e.value) and '\n' not in str(e.value)
  assert "bad_rows='skip'" in str(e.value)


def test_jsonl_bytes_that_are_not_utf8(tmp_path):
  path = tmp_path / 'bytes.jsonl'
  path.write_bytes(b'{"task": "qa", "prompt": "caf\xe9", "completion": "b"}\n')
  with pytest.raises(ValueError, match=r"bytes\.jsonl:1: field 'prompt' is not valid UTF-8"):
    read_jsonl(str(path))


def test_jsonl_skip_mode_counts_each_bad_line(tmp_path):
  good = {'task': 'qa', 'prompt': 'a', 'completion': 'b'}
  path = write_lines(tmp_path, [good, 'nope', good, {'task': 'qa', 'prompt': 'a'}, '', good])
  conversations, skipped = read_jsonl(path, bad_rows='skip')
  assert [c.where for c in conversations] == [f'{path}:1', f'{path}:3', f'{path}:6']
  assert len(skipped) == 2
  assert skipped[0].startswith(f'{path}:2: not valid JSON')
  assert skipped[1] == f"{path}:4: no field 'completion'"


def test_jsonl_tasks_filter_and_arguments(tmp_path):
  path = write_lines(tmp_path, [{'task': 'qa', 'prompt': 'a', 'completion': 'b'},
                                {'task': 'other', 'prompt': 'a', 'completion': 'b'}])
  with pytest.raises(ValueError, match=r":2: task 'other' is not one of \['qa'\]"):
    read_jsonl(path, tasks=['qa'])
  conversations, skipped = read_jsonl(path, tasks=iter(['qa']), bad_rows='skip')
  assert [c.task for c in conversations] == ['qa'] and len(skipped) == 1
  assert len(read_jsonl(path, tasks=['qa', 'other'])[0]) == 2
  with pytest.raises(ValueError, match="bad_rows: 'drop' is not one of"):
    read_jsonl(path, bad_rows='drop')
  missing = str(tmp_path / 'missing.jsonl')
  with pytest.raises(FileNotFoundError, match=f'{missing}: no such file'):
    read_jsonl(missing)


# The chatterbot corpus.

def independent_count(data_dir, language):
  """Sum of k - 1 over the language's conversations whose k >= 2 turns are all text."""
  total = 0
  folder = os.path.join(data_dir, language)
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), encoding='utf-8') as f:
      for turns in yaml.safe_load(f)['conversations']:
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
          total += max(len(turns) - 1, 0)
  return total


@pytest.fixture(scope='module')
def corpus():
  return text_sources.chatterbot_conversations()


def test_chatterbot_languages_are_the_data_folders():
  data_dir = text_sources.chatterbot_data_dir()
  folders = sorted(n for n in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, n)))
  assert text_sources.chatterbot_languages() == tuple(folders)
  assert len(folders) == 28 and {'english', 'yoruba', 'traditionalchinese'} <= set(folders)


def test_chatterbot_counts_and_a_known_pair(corpus):
  data_dir = text_sources.chatterbot_data_dir()
  assert list(corpus) == list(text_sources.chatterbot_languages())
  for language in ('english', 'ukrainian', 'yoruba'):
    assert len(corpus[language]) == independent_count(data_dir, language), language
  # chatterbot-corpus 1.3.3 (requirements.txt): 7,644 conversations give 11,953 exchanges.
  assert sum(len(v) for v in corpus.values()) == 11953
  for language, examples in corpus.items():
    for c in examples:
      assert c.task == CHATTERBOT_PREFIX + language
      assert [r for r, _ in c.messages] == ['user', 'assistant'] and all(
          isinstance(t, str) and t.strip() == t and t for _, t in c.messages)
  trivia = text_sources.chatterbot_conversations(['english'], ['trivia'])
  assert list(trivia) == ['english']
  assert trivia['english'][0] == Conversation(
      'chatterbot_english', (('user', 'Who was the 37th President of the United States?'),
                             ('assistant', 'Richard Nixon')),
      'chatterbot-corpus english/trivia.yml, conversation 1, turn 2')
  assert trivia['english'][1].messages[1] == ('assistant', '1963')  # quoted in the file
  skipped = text_sources.chatterbot_skipped(['english'], ['trivia'])
  assert skipped == [
      'chatterbot-corpus english/trivia.yml, conversation 14: a str, not a list of turns: '
      "'In a game of bingo, which number is represented by the p..."]


def test_chatterbot_unknown_names_and_missing_package(monkeypatch):
  with pytest.raises(ValueError, match=r"unknown language\(s\) \['klingon'\]; known: "
                                       r"\['bengali', 'chinese', "):
    text_sources.chatterbot_conversations(languages=['english', 'klingon'])
  with pytest.raises(ValueError, match=r"unknown category\(ies\) \['trivia'\] .*known: "
                                       r"\['conversations', 'food', "):
    text_sources.chatterbot_conversations(languages=['german'], categories=['trivia'])
  monkeypatch.setattr(text_sources, 'CHATTERBOT_PACKAGE', 'no_such_package_here')
  with pytest.raises(ImportError, match=r'pip install -r requirements\.txt'):
    text_sources.chatterbot_languages()


def test_chatterbot_pairs_scalars_and_skipped_turns(tmp_path):
  folder = tmp_path / 'corpus' / 'testish'
  folder.mkdir(parents=True)
  (folder / 'numbers.yml').write_text(
      'categories:\n- numbers\nconversations:\n'
      '- - What year?\n  - 1963\n  - And the price?\n  - 2.5\n'
      '- - One turn only\n'
      '- - Ask\n  - [a, list]\n  - Answer\n  - Again\n'
      '- A question? - An answer run into it.\n'
      '- - Truth?\n  - true\n  - ~\n', encoding='utf-8')
  (folder / 'alpha.yml').write_text('conversations:\n- - a\n  - " b "\n', encoding='utf-8')
  (tmp_path / 'corpus' / 'empty').mkdir()
  data_dir = str(tmp_path / 'corpus')
  assert text_sources.chatterbot_languages(data_dir) == ('testish',)
  examples = text_sources.chatterbot_conversations(data_dir=data_dir)['testish']

  def pair(user, reply, where):
    return Conversation('chatterbot_testish', (('user', user), ('assistant', reply)),
                        f'chatterbot-corpus testish/{where}')
  assert examples == [
      pair('a', 'b', 'alpha.yml, conversation 1, turn 2'),
      pair('What year?', '1963', 'numbers.yml, conversation 1, turn 2'),
      pair('1963', 'And the price?', 'numbers.yml, conversation 1, turn 3'),
      pair('And the price?', '2.5', 'numbers.yml, conversation 1, turn 4'),
      pair('Answer', 'Again', 'numbers.yml, conversation 3, turn 4'),
      pair('Truth?', 'True', 'numbers.yml, conversation 5, turn 2'),
  ]
  source = 'chatterbot-corpus testish/'
  assert text_sources.chatterbot_skipped(data_dir=data_dir) == [
      f'{source}numbers.yml, conversation 2: 1 turn(s), nothing answers it',
      f"{source}numbers.yml, conversation 3, turn 2: list ['a', 'list'] is not text; its "
      'exchanges are left out',
      f"{source}numbers.yml, conversation 4: a str, not a list of turns: 'A question? - An "
      "answer run into it.'",
      f'{source}numbers.yml, conversation 5, turn 3: NoneType None is not text; its exchanges '
      'are left out',
  ]
  assert list(text_sources.chatterbot_conversations(categories=['alpha'], data_dir=data_dir)
              ['testish']) == examples[:1]
  (folder / 'broken.yml').write_text('conversations: [unclosed\n', encoding='utf-8')
  with pytest.raises(ValueError, match=r'chatterbot-corpus testish/broken\.yml: not valid '
                                       r'YAML \(.*\)\.$'):
    text_sources.chatterbot_conversations(data_dir=data_dir)
  # safe_load builds no Python object: a python/ tag is refused, never run.
  (folder / 'broken.yml').write_text('conversations: !!python/object/apply:os.getpid []\n',
                                     encoding='utf-8')
  with pytest.raises(ValueError, match=r'broken\.yml: not valid YAML \(could not determine a '
                                       r'constructor for the tag .*python/object/apply'):
    text_sources.chatterbot_conversations(data_dir=data_dir)
  (folder / 'broken.yml').write_text('- a\n- b\n', encoding='utf-8')
  with pytest.raises(ValueError, match='broken.yml: not a mapping with a list of conversat'):
    text_sources.chatterbot_conversations(categories=['broken'], data_dir=data_dir)
