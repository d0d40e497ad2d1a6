"""Tokenisation and label alignment: tags on first word pieces, pairs, missing labels."""

import numpy as np
import pytest

from mtl_jax.data.features import Example, encode_examples
from mtl_jax.data.tokenizer import learn_vocabulary, load_wordpiece, write_vocabulary
from mtl_jax.tasks import Task, TaskKind

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat', '##s', 'run', '##ning',
         'a', 'dog', 'sat']
TAG = Task('tag', TaskKind.TAGGING, 3, ('a',), 'tag', ('token_accuracy',), 'test')
CLS = Task('cls', TaskKind.CLASSIFICATION, 2, ('a',), 'cls', ('accuracy',), 'test')
PAIR = Task('pair', TaskKind.CLASSIFICATION, 3, ('a', 'b'), 'pair', ('accuracy',), 'test')
REG = Task('reg', TaskKind.REGRESSION, 1, ('a', 'b'), 'reg', ('pearson',), 'test')


@pytest.fixture
def tokenizer(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(VOCAB) + '\n')
  return load_wordpiece(str(path), seq_len=10)


def test_tags_sit_on_first_word_pieces(tokenizer):
  ex = Example((['the', 'cats', 'running', 'dog'],), {'tag': [0, 1, 2, 1], 'cls': 1})
  table = encode_examples([ex], (TAG, CLS, PAIR), tokenizer, 10)
  ids = table['input_ids'][0]
  # [CLS] the cat ##s run ##ning dog [SEP] [PAD] [PAD]
  assert [VOCAB[i] for i in ids] == ['[CLS]', 'the', 'cat', '##s', 'run', '##ning', 'dog',
                                     '[SEP]', '[PAD]', '[PAD]']
  np.testing.assert_array_equal(table['attention_mask'][0], [1] * 8 + [0] * 2)
  np.testing.assert_array_equal(table['label_masks']['tag'][0], [0, 1, 1, 0, 1, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(table['labels']['tag'][0][[1, 2, 4, 6]], [0, 1, 2, 1])
  assert table['labels']['cls'][0] == 1 and table['label_masks']['cls'][0] == 1
  assert table['label_masks']['pair'][0] == 0  # a single text carries no pair-task label


def test_pairs_get_segment_ids_and_truncation(tokenizer):
  ex = Example((['the', 'cat', 'sat'], ['a', 'dog', 'sat', 'the', 'dog', 'sat']),
               {'pair': 2, 'reg': 3.5})
  table = encode_examples([ex], (PAIR, REG, TAG), tokenizer, 10)
  assert table['input_ids'].shape == (1, 10)
  tokens = [VOCAB[i] for i in table['input_ids'][0]]
  assert tokens[0] == '[CLS]' and tokens.count('[SEP]') == 2 and tokens[-1] == '[SEP]'
  first_sep = tokens.index('[SEP]')
  np.testing.assert_array_equal(table['segment_ids'][0][:first_sep + 1], 0)
  np.testing.assert_array_equal(table['segment_ids'][0][first_sep + 1:], 1)
  assert table['labels']['reg'][0] == np.float32(3.5) and table['labels']['pair'][0] == 2
  assert table['label_masks']['tag'].sum() == 0


def test_missing_labels_are_masked(tokenizer):
  examples = [Example((['the', 'dog'],), {'cls': None, 'tag': [0, 1]}),
              Example((['a', 'cat'],), {'cls': 0})]
  table = encode_examples(examples, (CLS, TAG), tokenizer, 10)
  np.testing.assert_array_equal(table['label_masks']['cls'], [0, 1])
  assert table['label_masks']['tag'][1].sum() == 0 and table['label_masks']['tag'][0].sum() == 2


def test_bad_labels_name_where(tokenizer):
  with pytest.raises(ValueError, match=r"my.tsv, row 1: task 'cls' has invalid label\(s\) \[7\]"):
    encode_examples([Example((['the'],), {'cls': 0}), Example((['a'],), {'cls': 7})],
                    (CLS,), tokenizer, 10, where='my.tsv')
  with pytest.raises(ValueError, match='one tag per word'):
    encode_examples([Example((['the', 'cat'],), {'tag': [0]})], (TAG,), tokenizer, 10)


def test_missing_vocab_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='WordPiece vocabulary not found'):
    load_wordpiece(str(tmp_path / 'nope.txt'), 8)
  bad = tmp_path / 'bad.txt'
  bad.write_text('the\ncat\n')
  with pytest.raises(ValueError, match=r"lacks special tokens \['\[PAD\]'"):
    load_wordpiece(str(bad), 8)


def test_learnt_vocabulary_merges_frequent_pairs_deterministically(tmp_path):
  words = ('low ' * 5 + 'lower ' * 2 + 'newest ' * 6 + 'widest ' * 3).split()
  vocab = learn_vocabulary(words, 5 + 10 + 1)
  # 5 specials, the 11 initial pieces, then merges.
  base = {'l', '##o', '##w', '##e', '##r', 'n', '##s', '##t', 'w', '##i', '##d'}
  assert set(vocab[5:5 + len(base)]) == base
  # (##e, ##s) and (##s, ##t) both occur 6 (newest) + 3 (widest) = 9 times; the tie goes to
  # the smaller pair, then (##es, ##t) is the most frequent pair (9).
  vocab = learn_vocabulary(words, 5 + len(base) + 2)
  assert vocab[-2:] == ['##es', '##est']
  assert learn_vocabulary(words, 40) == learn_vocabulary(list(reversed(words)), 40)
  tok = load_wordpiece(write_vocabulary(vocab, str(tmp_path / 'v.txt')), 12)
  assert tok.encode(['newest'], is_pretokenized=True).tokens[:5] == ['[CLS]', 'n', '##e', '##w',
                                                                     '##est']
