"""WordPiece tokenisation through the `tokenizers` library (BERT's scheme)."""

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Sequence

from tokenizers import BertWordPieceTokenizer, Tokenizer, normalizers, pre_tokenizers

from mtl_jax.data import llm_tokenizer

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


def load_wordpiece(vocab_path: str, seq_len: int, lowercase: bool = True
                   ) -> BertWordPieceTokenizer:
  """A BERT tokenizer from vocab.txt that pads and truncates every input to seq_len."""
  if not os.path.isfile(vocab_path):
    raise FileNotFoundError(f'WordPiece vocabulary not found: {vocab_path}')
  with open(vocab_path, encoding='utf-8') as f:
    vocab = [line.rstrip('\n') for line in f]
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(f'{vocab_path}: vocabulary lacks special tokens {missing}.')
  tokenizer = BertWordPieceTokenizer(vocab_path, lowercase=lowercase)
  tokenizer.enable_truncation(seq_len)
  tokenizer.enable_padding(length=seq_len, pad_id=tokenizer.token_to_id('[PAD]'))
  return tokenizer


def load_pretrained_tokenizer(path: str, seq_len: int) -> Tokenizer:
  """A pretrained model's tokenizer, padding and truncating to seq_len (on the right, as
  training rows are). `path` is a model's folder or, for a decoder LLM, its GGUF file.

  tokenizer.json (the `tokenizers` library's file: normaliser, pre-tokeniser, model and the
  [CLS]/[SEP] template, so lowercasing is as the model was trained) is preferred; otherwise
  vocab.txt as WordPiece, lowercased unless tokenizer_config.json says do_lower_case false
  (Hugging Face's BertTokenizer default is true). An LLM's tokenizer (a GGUF file, or a folder
  whose padding token is not '[PAD]') comes from llm_tokenizer, with its own special tokens:
  it pads with its padding token, else eos.
  """
  if os.path.isfile(path):
    return _padded(llm_tokenizer.from_gguf(path), seq_len)
  json_path = os.path.join(path, 'tokenizer.json')
  if not os.path.isfile(json_path):
    config_path = os.path.join(path, 'tokenizer_config.json')
    lowercase = True
    if os.path.isfile(config_path):
      with open(config_path, encoding='utf-8') as f:
        lowercase = json.load(f).get('do_lower_case', True)
    vocab_path = os.path.join(path, 'vocab.txt')
    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(f'config.data.vocabulary: {path} holds neither tokenizer.json '
                              f'nor vocab.txt.')
    return load_wordpiece(vocab_path, seq_len, lowercase)
  tokenizer = Tokenizer.from_file(json_path)
  pad_token = (tokenizer.padding or {}).get('pad_token', '[PAD]')
  pad_id = tokenizer.token_to_id(pad_token)
  if pad_id is None:
    return _padded(llm_tokenizer.from_folder(path), seq_len)
  tokenizer.enable_truncation(seq_len)
  tokenizer.enable_padding(length=seq_len, pad_id=pad_id, pad_token=pad_token)
  return tokenizer


def _padded(llm: llm_tokenizer.LlmTokenizer, seq_len: int) -> Tokenizer:
  """An LLM's tokenizer that pads with its pad_id and truncates to seq_len."""
  if llm.pad_id is None:
    raise ValueError(f'{llm.source}: the tokenizer has neither a padding token nor eos to pad '
                     f'training rows with.')
  tokenizer = llm.tokenizer
  tokenizer.enable_truncation(seq_len)
  tokenizer.enable_padding(length=seq_len, pad_id=llm.pad_id,
                           pad_token=tokenizer.id_to_token(llm.pad_id))
  return tokenizer


def words_of(texts: Iterable[str | list[str]]) -> Iterable[str]:
  """The words WordPiece sees: BERT's normalisation (lowercase, no accents) and pre-split
  on whitespace and punctuation; a pre-split text (a list of words) is taken as it is."""
  normalizer, splitter = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
  for text in texts:
    if isinstance(text, list):
      yield from text
    else:
      yield from (w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))


def learnt_vocabulary(texts: Iterable[str | list[str]], vocab_size: int, data_dir: str) -> str:
  """vocab.txt learnt from `texts`, cached in data_dir under a hash of their word counts
  (so the same training text reuses it, and other text never does)."""
  counts = collections.Counter(w.lower() for w in words_of(texts))
  key = hashlib.sha256(json.dumps(sorted(counts.items())).encode()).hexdigest()[:16]
  path = os.path.join(data_dir, 'mtl_jax_vocab', f'{key}_v{vocab_size}.txt')
  if not os.path.exists(path):
    write_vocabulary(learn_vocabulary(counts.elements(), vocab_size), path)
  return path


def learn_vocabulary(words: Iterable[str], vocab_size: int) -> list[str]:
  """A WordPiece vocabulary learnt by greedy pair merges, as the `tokenizers` trainer does,
  but deterministic: ties go to the lexicographically smallest pair (the library's trainer
  breaks them by hash order, so its vocabulary changes from one process to the next).
  """
  counts = collections.Counter(w.lower() for w in words)
  # Each word as its pieces: first char, then '##'-prefixed continuations.
  split = {w: [w[0]] + ['##' + c for c in w[1:]] for w in sorted(counts) if w}
  vocab = list(SPECIAL_TOKENS) + sorted({p for pieces in split.values() for p in pieces})
  while len(vocab) < vocab_size:
    pairs = collections.Counter()
    for word, pieces in split.items():
      for pair in zip(pieces, pieces[1:]):
        pairs[pair] += counts[word]
    if not pairs:
      break  # every word is a single piece already
    best = min(pairs, key=lambda pair: (-pairs[pair], pair))
    merged = best[0] + best[1][2:]
    for word, pieces in split.items():
      i, out = 0, []
      while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
          out.append(merged)
          i += 2
        else:
          out.append(pieces[i])
          i += 1
      split[word] = out
    vocab.append(merged)
  return vocab


def write_vocabulary(vocab: Sequence[str], vocab_path: str) -> str:
  """Writes vocab.txt atomically (never leaves a half-written file); returns its path."""
  os.makedirs(os.path.dirname(vocab_path) or '.', exist_ok=True)
  tmp = vocab_path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(token + '\n' for token in vocab)
  os.replace(tmp, vocab_path)
  return vocab_path
