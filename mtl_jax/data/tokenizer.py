"""WordPiece tokenisation through the `tokenizers` library (BERT's scheme)."""

import collections
import os
from collections.abc import Iterable, Sequence

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
