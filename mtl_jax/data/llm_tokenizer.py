"""Tokenizers and chat templates of decoder-only LLMs, from a Hugging Face folder or a GGUF file.

A Hugging Face folder holds tokenizer.json (read by the `tokenizers` library) and
tokenizer_config.json (special token strings, add_bos_token / add_eos_token, the chat
template); special_tokens_map.json, chat_template.jinja and generation_config.json are read
when present. A GGUF file holds the same tokenizer as metadata (tokens, merges, token types,
special ids, the pre-tokenizer's name, the chat template); `from_gguf` rebuilds it with the
`tokenizers` building blocks. The reference for "the same tokenizer" is transformers' own GGUF
conversion (5.x, integrations/gguf/gguf_tokenizer_mapping.py): byte-level BPE over the file's
vocabulary (tokens spelled outside the byte alphabet re-spelled into it) and merges, control
tokens (type 3) as special added tokens and user-defined ones (type 4) as plain added tokens,
BOS/EOS added as tokenizer.ggml.add_bos_token / add_eos_token say, and the split regex named
by tokenizer.ggml.pre. One deliberate difference: for the pre-tokenizers that split digits
first (llama.cpp's 'smollm', 'starcoder', ...) this module splits digits one by one as the
models' own tokenizer.json does, where transformers applies GPT-2's regex alone. The ids only
differ if the merges join digits; SmolLM2's join none.

Chat templates are Jinja templates from files a user downloaded, so they render in jinja2's
immutable sandbox, configured as transformers configures it (trim_blocks, lstrip_blocks,
loopcontrols, `raise_exception`, `strftime_now`, a `tojson` that does not HTML-escape, a
`{% generation %}` block that renders its body, a `namespace` that refuses '_' names, inputs
rebuilt from plain JSON types): a template that reaches for Python internals (`__class__`,
`__globals__`) raises ChatTemplateError instead of running.
"""

import dataclasses
import datetime
import functools
import json
import os
from collections.abc import Mapping, Sequence

import jinja2
import numpy as np
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

TOKENIZER_FILE = 'tokenizer.json'
CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_FILE = 'special_tokens_map.json'
TEMPLATE_FILE = 'chat_template.jinja'
GENERATION_FILE = 'generation_config.json'
SPECIAL_KEYS = ('bos_token', 'eos_token', 'unk_token', 'pad_token')

# llama.cpp's token types (gguf.TokenType): control tokens are special, user-defined ones are
# matched whole in text but decoded like text.
CONTROL, USER_DEFINED = 3, 4
# `tokenizer.ggml.pre` -> the split before byte-level BPE (llama.cpp's llama-vocab.cpp, and the
# names transformers maps). A name missing here is refused rather than tokenized approximately.
GPT2_FAMILY = ('gpt2', 'mpt', 'olmo', 'jais', 'default')
DIGITS_FIRST = ('smollm', 'starcoder', 'refact', 'command-r', 'codeshell', 'exaone', 'minerva')
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_REGEXES = {
    **dict.fromkeys(('llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'dbrx', 'smaug-bpe'),
                    LLAMA3_REGEX),
    **dict.fromkeys(('qwen2', 'deepseek-r1-qwen', 'stablelm2'), QWEN2_REGEX),
}
# End-of-turn markers of common chat formats (ChatML, Llama 3, Gemma, Phi-3), tried in order;
# the first that is in the vocabulary and in the chat template ends a turn.
END_OF_TURN = ('<|im_end|>', '<|eot_id|>', '<end_of_turn>', '<|end|>')


class TokenizerError(ValueError):
  """A tokenizer file cannot be used; the one-line message names the file."""


class ChatTemplateError(ValueError):
  """A chat template is missing, malformed, refused by the sandbox or raised an error."""


def _one_line(e: Exception) -> str:
  """An error's message on one line, for messages that must stay one line."""
  return ' '.join(str(e).split()).rstrip('.') or type(e).__name__


@dataclasses.dataclass(frozen=True)
class LlmTokenizer:
  """A `tokenizers.Tokenizer` with an LLM's special tokens and chat template.

  bos/eos/unk/pad are token strings (None when the model has none). `pad_id` falls back to
  eos when the model defines no padding token (Llama's folders define none): padded
  positions are masked, so their id is never learnt from. `end_of_turn` is
  the token a chat template closes each turn with (e.g. '<|im_end|>' for ChatML), eos when
  the template names none of END_OF_TURN; generation stops at any of `stop_ids`. `source` is
  the file or folder it came from, for error messages.
  """
  tokenizer: Tokenizer
  source: str
  bos_token: str | None = None
  eos_token: str | None = None
  unk_token: str | None = None
  pad_token: str | None = None
  chat_template: str | None = None
  end_of_turn: str | None = None
  extra_stop_ids: tuple[int, ...] = ()  # generation_config.json's eos_token_id list

  @classmethod
  def from_folder(cls, folder: str) -> 'LlmTokenizer':
    return from_folder(folder)

  @classmethod
  def from_gguf(cls, path: str, reader=None) -> 'LlmTokenizer':
    return from_gguf(path, reader)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str | None) -> int | None:
    return None if token is None else self.tokenizer.token_to_id(token)

  @property
  def bos_id(self) -> int | None:
    return self.token_id(self.bos_token)

  @property
  def eos_id(self) -> int | None:
    return self.token_id(self.eos_token)

  @property
  def pad_id(self) -> int | None:
    """The padding token's id, or eos's when the model has no padding token."""
    pad = self.token_id(self.pad_token)
    return self.eos_id if pad is None else pad

  @property
  def end_of_turn_id(self) -> int | None:
    return self.token_id(self.end_of_turn)

  @property
  def stop_ids(self) -> frozenset[int]:
    ids = (self.eos_id, self.end_of_turn_id) + self.extra_stop_ids
    return frozenset(i for i in ids if i is not None)

  def is_stop(self, token_id: int) -> bool:
    return int(token_id) in self.stop_ids

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Ids of `text`; add_special_tokens adds what the model's post-processor adds (e.g.
    BOS), as transformers does. Special token strings in the text become their ids."""
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def special_tokens(self) -> dict[str, str]:
    """The special token strings a chat template sees (bos_token, eos_token, ...)."""
    return {k: getattr(self, k) for k in SPECIAL_KEYS if getattr(self, k) is not None}

  def apply_chat_template(self, messages: Sequence[Mapping], add_generation_prompt: bool,
                          **extra) -> str:
    """The model's chat template rendered over `messages` (dicts with 'role' and 'content'),
    with the variables transformers passes: messages, add_generation_prompt, the special
    token strings, tools/documents (None unless given) and any `extra` keyword."""
    if not self.chat_template:
      raise ChatTemplateError(f'{self.source}: the model has no chat template, so it cannot '
                              f'format a chat; give the prompt as plain text.')
    variables = {'tools': None, 'documents': None, **self.special_tokens(), **extra}
    return render_chat(self.chat_template, messages, add_generation_prompt, variables, self.source)

  def encode_chat(self, messages: Sequence[Mapping], add_generation_prompt: bool,
                  **extra) -> list[int]:
    """Ids of the rendered chat; no special tokens are added, since the template writes
    them (transformers' apply_chat_template(tokenize=True) does the same)."""
    text = self.apply_chat_template(messages, add_generation_prompt, **extra)
    return self.encode(text, add_special_tokens=False)

  def save(self, folder: str) -> str:
    """Writes tokenizer.json and tokenizer_config.json (special tokens and chat template),
    a folder that from_folder and transformers' AutoTokenizer both load; returns it."""
    os.makedirs(folder, exist_ok=True)
    self.tokenizer.save(os.path.join(folder, TOKENIZER_FILE))
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'clean_up_tokenization_spaces': False,
              **self.special_tokens()}
    if self.chat_template:
      config['chat_template'] = self.chat_template
    with open(os.path.join(folder, CONFIG_FILE), 'w', encoding='utf-8') as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
    return folder


def load_llm_tokenizer(path: str) -> LlmTokenizer:
  """The tokenizer of a GGUF file or of a Hugging Face folder."""
  return from_gguf(path) if os.path.isfile(path) else from_folder(path)


# --- Hugging Face folders ---------------------------------------------------------------------


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise TokenizerError(f'{path}: unreadable JSON ({_one_line(e)}).') from None


def token_string(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get('content')
  return value if isinstance(value, str) else None


def pick_template(template, where: str, name: str = 'default') -> str | None:
  """tokenizer_config.json's chat_template: a string, or a list of {name, template} (one
  template per use, as transformers saves several); the `name` one, else None."""
  if template is None or isinstance(template, str):
    return template
  if isinstance(template, list):
    named = {t.get('name'): t.get('template') for t in template if isinstance(t, dict)}
    return named.get(name)
  raise TokenizerError(f'{where}: chat_template is neither a string nor a list of templates.')


def stop_ids_of(generation: dict) -> tuple[int, ...]:
  """generation_config.json's eos_token_id (an int or a list): tokens that end generation."""
  ids = generation.get('eos_token_id')
  ids = [ids] if isinstance(ids, int) else ids or []
  return tuple(int(i) for i in ids)


def from_folder(folder: str) -> LlmTokenizer:
  """The tokenizer of a Hugging Face model folder (tokenizer.json + tokenizer_config.json)."""
  path = os.path.join(folder, TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise TokenizerError(f'{path}: not found; an LLM folder needs {TOKENIZER_FILE} (the '
                         f'`tokenizers` file) beside {CONFIG_FILE}.')
  try:
    tokenizer = Tokenizer.from_file(path)
  except Exception as e:  # the Rust side raises a bare Exception on a malformed file
    raise TokenizerError(f'{path}: not a tokenizers file ({_one_line(e)}).') from None
  config_path = os.path.join(folder, CONFIG_FILE)
  config = _read_json(config_path) if os.path.isfile(config_path) else {}
  special_path = os.path.join(folder, SPECIAL_TOKENS_FILE)
  special = _read_json(special_path) if os.path.isfile(special_path) else {}
  # special_tokens_map.json overrides tokenizer_config.json, as in transformers.
  tokens = {k: token_string(special.get(k, config.get(k))) for k in SPECIAL_KEYS}
  for key, token in tokens.items():
    if token is not None and tokenizer.token_to_id(token) is None:
      where = special_path if key in special else config_path
      raise TokenizerError(f'{where}: {key} {token!r} is not in the vocabulary of {path}.')
  template_path = os.path.join(folder, TEMPLATE_FILE)
  if os.path.isfile(template_path):  # newer transformers saves it beside the config
    with open(template_path, encoding='utf-8') as f:
      template = f.read()
  else:
    template = pick_template(config.get('chat_template'), config_path)
  if 'add_bos_token' in config or 'add_eos_token' in config:
    # transformers rebuilds the post-processor from these flags when the config sets one.
    tokenizer.post_processor = bos_eos_processor(
        tokens['bos_token'], tokens['eos_token'], bool(config.get('add_bos_token')),
        bool(config.get('add_eos_token')), tokenizer.get_vocab(with_added_tokens=True))
  generation_path = os.path.join(folder, GENERATION_FILE)
  generation = _read_json(generation_path) if os.path.isfile(generation_path) else {}
  return LlmTokenizer(tokenizer, folder, chat_template=template,
                      end_of_turn=end_of_turn_token(tokenizer, template, tokens['eos_token']),
                      extra_stop_ids=stop_ids_of(generation), **tokens)


def end_of_turn_token(tokenizer: Tokenizer, template: str | None, eos: str | None) -> str | None:
  """The first END_OF_TURN marker both in the vocabulary and in the template, else eos."""
  for token in END_OF_TURN:
    if template and token in template and tokenizer.token_to_id(token) is not None:
      return token
  return eos


# --- GGUF files -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _gguf_reader_class():
  import gguf  # only GGUF users pay for the import

  class PlainViewGGUFReader(gguf.GGUFReader):
    """gguf.GGUFReader that parses through a plain ndarray view of its np.memmap: the memmap
    subclass runs two Python callbacks for each of the ~1M small slices that parsing SmolLM2's
    100k strings takes (3.3 s -> 0.9 s of CPU). The fields, and tensors' data (plain ndarray
    views of the same mapped bytes), hold the same values; `.data` is the memmap afterwards."""
    _parsing = False

    def __init__(self, path, mode='r'):
      self._parsing = True
      try:
        super().__init__(path, mode)
      finally:
        self._parsing = False

    @property
    def data(self):
      return self._view if self._parsing else self._memmap

    @data.setter
    def data(self, memmap):
      self._memmap, self._view = memmap, memmap.view(np.ndarray)

  return PlainViewGGUFReader


def gguf_reader(path: str):
  """A gguf.GGUFReader of `path` (the faster subclass above); raises as gguf's reader does."""
  return _gguf_reader_class()(path)


def read_gguf_metadata(path: str) -> dict:
  """The GGUF file's tokenizer.* and general.* metadata as plain Python values. GGUFReader
  parses every field of the file (about a second for SmolLM2's 100k strings): a caller that
  already holds a reader passes it to gguf_metadata instead."""
  if not os.path.isfile(path):
    raise TokenizerError(f'{path}: not found.')
  try:
    reader = gguf_reader(path)
  except Exception as e:  # gguf raises ValueError, struct.error, ... on a bad or short file
    raise TokenizerError(f'{path}: not a readable GGUF file ({_one_line(e)}).') from None
  return gguf_metadata(reader)


def gguf_metadata(reader) -> dict:
  """A gguf.GGUFReader's tokenizer.* and general.* fields as plain Python values."""
  return {k: f.contents() for k, f in reader.fields.items()
          if k.startswith(('tokenizer.', 'general.'))}


def gguf_pre_tokenizer(pre: str, where: str) -> pre_tokenizers.PreTokenizer:
  """The split before byte-level BPE that llama.cpp applies for `tokenizer.ggml.pre`."""
  if pre in GPT2_FAMILY:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in DIGITS_FIRST:  # digits one by one, then GPT-2's regex (as SmolLM's tokenizer.json)
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=True)])
  if pre in SPLIT_REGEXES:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEXES[pre]), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  known = sorted(GPT2_FAMILY + DIGITS_FIRST + tuple(SPLIT_REGEXES))
  raise TokenizerError(f"{where}: tokenizer.ggml.pre = {pre!r} is not supported "
                       f"(supported: {', '.join(known)}).")


def _gguf_token(meta: dict, key: str, tokens: Sequence[str], where: str) -> str | None:
  """The token a `tokenizer.ggml.*_token_id` field names, None if the field is absent."""
  index = meta.get(key)
  if index is None:
    return None
  if not 0 <= int(index) < len(tokens):
    raise TokenizerError(f'{where}: {key} = {index} is outside the {len(tokens)}-token '
                         f'vocabulary.')
  return tokens[int(index)]


def bos_eos_processor(bos: str | None, eos: str | None, add_bos: bool, add_eos: bool,
                      ids: Mapping[str, int]) -> processors.TemplateProcessing:
  """What add_special_tokens=True adds around a text: BOS and/or EOS, as transformers'
  update_post_processor builds it (nothing when both flags are off)."""
  before = [bos] if add_bos and bos is not None else []
  after = [eos] if add_eos and eos is not None else []
  single = before + ['$A'] + after
  pair = single + [t + ':1' for t in before] + ['$B:1'] + [t + ':1' for t in after]
  return processors.TemplateProcessing(single=' '.join(single), pair=' '.join(pair),
                                       special_tokens=[(t, ids[t]) for t in {*before, *after}])


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other
  bytes (control characters, space, ...) for the characters from U+0100 on, in order."""
  printable = [*range(0x21, 0x7f), *range(0xa1, 0xad), *range(0xae, 0x100)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def byte_spelling(token: str, alphabet: frozenset[str]) -> str:
  """A token as byte-level BPE spells it: unchanged if it already uses the byte alphabet,
  else its UTF-8 bytes mapped (some GGUF files store added tokens as plain text)."""
  if set(token) <= alphabet:
    return token
  return ''.join(byte_alphabet()[b] for b in token.encode('utf-8'))


def tokenizer_from_gguf_metadata(meta: dict, where: str) -> LlmTokenizer:
  """Rebuilds the tokenizer a GGUF file describes (see the module docstring)."""
  model = meta.get('tokenizer.ggml.model')
  if model is None:
    raise TokenizerError(f'{where}: the GGUF file has no tokenizer metadata '
                         f'(tokenizer.ggml.model is missing).')
  if model != 'gpt2':
    raise TokenizerError(f"{where}: tokenizer.ggml.model = {model!r} is not supported (only "
                         f"'gpt2', byte-level BPE).")
  tokens = list(meta.get('tokenizer.ggml.tokens') or [])
  merges = meta.get('tokenizer.ggml.merges')
  if not tokens or merges is None:
    missing = 'tokenizer.ggml.tokens' if not tokens else 'tokenizer.ggml.merges'
    raise TokenizerError(f'{where}: {missing} is missing; a BPE tokenizer needs both its '
                         f'tokens and its merges.')
  types = list(meta.get('tokenizer.ggml.token_type') or [1] * len(tokens))
  if len(types) != len(tokens):
    raise TokenizerError(f'{where}: tokenizer.ggml.token_type has {len(types)} entries for '
                         f'{len(tokens)} tokens.')
  alphabet = frozenset(byte_alphabet().values())
  vocab = {byte_spelling(token, alphabet): i for i, token in enumerate(tokens)}
  # Merges are 'left right'; byte-level tokens never hold a space (it is 'Ġ').
  tokenizer = Tokenizer(models.BPE(vocab, [tuple(m.split(' ', 1)) for m in merges]))
  tokenizer.pre_tokenizer = gguf_pre_tokenizer(meta.get('tokenizer.ggml.pre', 'default'), where)
  tokenizer.decoder = decoders.ByteLevel()
  # Control and user-defined tokens stay whole in text. One spelled outside the byte alphabet
  # is a llama.cpp mislabel of an ordinary token (transformers skips it too).
  spelled = [(t, kind) for t, kind in zip(tokens, types) if set(t) <= alphabet]
  tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, kind in spelled if kind == CONTROL])
  tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, kind in spelled if kind == USER_DEFINED])
  named = {key: _gguf_token(meta, f'tokenizer.ggml.{field}', tokens, where)
           for key, field in (('bos_token', 'bos_token_id'), ('eos_token', 'eos_token_id'),
                              ('unk_token', 'unknown_token_id'), ('pad_token', 'padding_token_id'))}
  tokenizer.post_processor = bos_eos_processor(
      named['bos_token'], named['eos_token'], bool(meta.get('tokenizer.ggml.add_bos_token')),
      bool(meta.get('tokenizer.ggml.add_eos_token')), {t: i for i, t in enumerate(tokens)})
  template = meta.get('tokenizer.chat_template')
  eot = _gguf_token(meta, 'tokenizer.ggml.eot_token_id', tokens, where)
  return LlmTokenizer(tokenizer, where, chat_template=template,
                      end_of_turn=eot or end_of_turn_token(tokenizer, template, named['eos_token']),
                      **named)


def from_gguf(path: str, reader=None) -> LlmTokenizer:
  """The tokenizer stored in a GGUF file's metadata (byte-level BPE, 'gpt2' model only);
  `reader`, a gguf.GGUFReader of that file if the caller has one, saves reading it again."""
  meta = read_gguf_metadata(path) if reader is None else gguf_metadata(reader)
  return tokenizer_from_gguf_metadata(meta, path)


# --- Chat templates ---------------------------------------------------------------------------


class GenerationBlock(Extension):
  """`{% generation %}...{% endgeneration %}` (transformers marks the assistant's tokens with
  it for training masks): rendered as its body."""
  tags = {'generation'}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
    return nodes.Scope(body, lineno=lineno)


def raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # jinja2's own tojson escapes <, >, & and ' for HTML; templates expect plain JSON.
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def _refuse_private(name) -> None:
  if isinstance(name, str) and name.startswith('_'):
    raise jinja2.exceptions.SecurityError(f'a chat template may not store {name!r} on a '
                                          f'namespace (names starting with _ are refused).')


class TemplateNamespace(Namespace):
  """`namespace(...)` for templates: jinja2's, refusing attribute names that start with '_'."""

  def __init__(*args, **kwargs):  # jinja2's signature, so namespace(self=...) still works
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _refuse_private(name)
    Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _refuse_private(name)
    Namespace.__setitem__(self, name, value)


class TemplateDict:
  """`dict(...)` and `dict.fromkeys(...)` for templates, without handing them the type."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


class ChatSandbox(ImmutableSandboxedEnvironment):
  """jinja2's immutable sandbox, but an unsafe attribute raises where it is read: jinja2's
  own returns an undefined that renders as '' and only raises when used further."""

  def unsafe_undefined(self, obj, attribute):
    raise jinja2.exceptions.SecurityError(
        f'access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe')


@functools.lru_cache(maxsize=1)
def chat_environment() -> ChatSandbox:
  """The sandbox chat templates render in: no attribute starting with '_', no mutation of
  lists or dicts, and only the helpers transformers gives templates."""
  env = ChatSandbox(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[GenerationBlock, 'jinja2.ext.loopcontrols'])
  env.filters['tojson'] = tojson
  env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                     dict=TemplateDict(), namespace=TemplateNamespace)
  return env


def plain_data(value):
  """`value` rebuilt from JSON types only (subclasses of str/int/float lose their methods,
  numpy scalars become Python ones, other objects a '<TypeName>' placeholder), so a template
  cannot call methods of objects the caller put in a message."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, np.generic):
    return plain_data(value.item())
  for base in (str, int, float):  # subclasses: enums, ...
    if isinstance(value, base):
      return str.__str__(value) if base is str else base(value)
  if isinstance(value, Mapping):
    return {plain_data(k): plain_data(v) for k, v in value.items()}
  if isinstance(value, tuple):
    return tuple(plain_data(v) for v in value)
  if isinstance(value, list):
    return [plain_data(v) for v in value]
  return f'<{type(value).__name__}>'


@functools.lru_cache(maxsize=16)
def compile_template(template: str, where: str) -> jinja2.Template:
  try:
    return chat_environment().from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ChatTemplateError(f'{where}: the chat template is not valid Jinja (line {e.lineno}: '
                            f'{_one_line(e)}).') from None


def render_chat(template: str, messages: Sequence[Mapping], add_generation_prompt: bool,
                variables: Mapping, where: str) -> str:
  """`template` rendered in the sandbox over `messages` (keys whose value is None dropped, as
  transformers does: templates handle a missing key better than a None); ChatTemplateError,
  naming `where`, if the sandbox refuses it or it raises."""
  compiled = compile_template(template, where)
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise ChatTemplateError(f'message {i} is a {type(message).__name__}, not a dict with '
                              f"'role' and 'content'.")
  chat = [{k: v for k, v in plain_data(m).items() if v is not None} for m in messages]
  try:
    return compiled.render(messages=chat, add_generation_prompt=add_generation_prompt,
                           **plain_data(dict(variables)))
  except jinja2.exceptions.SecurityError as e:
    raise ChatTemplateError(f'{where}: the chat template was refused by the sandbox: '
                            f'{_one_line(e)}.') from e
  except jinja2.TemplateError as e:
    raise ChatTemplateError(f'{where}: the chat template failed: {_one_line(e)}.') from e


# --- Batches ----------------------------------------------------------------------------------


def check_fits(tokenizer: LlmTokenizer, vocab_size: int, where: str) -> None:
  """Raises unless every token id has a row in an embedding of `vocab_size` rows (a larger
  embedding is fine: models pad their tables)."""
  if tokenizer.vocab_size > vocab_size:
    raise TokenizerError(f'{where}: the tokenizer ({tokenizer.source}) has '
                         f'{tokenizer.vocab_size} tokens but the embedding has only '
                         f'{vocab_size} rows.')


def _check_lengths(rows: Sequence[Sequence[int]], length: int) -> None:
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f'row {i} has {len(row)} tokens, more than the batch length {length}.')


def pad_right(rows: Sequence[Sequence[int]], length: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """A training batch: (ids, mask), int32 [len(rows), length], each row's tokens first."""
  _check_lengths(rows, length)
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return ids, mask


def pad_left(rows: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A generation batch: (ids, mask, positions), int32 [len(rows), length], each row's tokens
  last so every row's next token goes to the same column. Positions count real tokens only
  (cumsum(mask) - 1, 0 on the padding), so a prompt's rotary positions do not depend on how
  much padding its row has."""
  _check_lengths(rows, length)
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    if len(row):
      ids[i, length - len(row):] = row
      mask[i, length - len(row):] = 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return ids, mask, positions
