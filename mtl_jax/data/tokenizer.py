"""WordPiece tokenisation through the `tokenizers` library (BERT's scheme)."""

import os
from collections.abc import Iterable

from tokenizers import BertWordPieceTokenizer

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


def train_wordpiece(sentences: Iterable[str], vocab_size: int, vocab_path: str) -> str:
  """Learns a WordPiece vocabulary from text and writes it as vocab.txt; returns its path."""
  tokenizer = BertWordPieceTokenizer(lowercase=True)
  tokenizer.train_from_iterator(sentences, vocab_size=vocab_size, min_frequency=1,
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False)
  directory = os.path.dirname(vocab_path) or '.'
  os.makedirs(directory, exist_ok=True)
  vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
  tmp = vocab_path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(token + '\n' for token, _ in vocab)
  os.replace(tmp, vocab_path)  # never leaves a half-written vocabulary behind
  return vocab_path
