"""Tests for mtl_jax.metrics and mtl_jax.evaluation.summary.

sklearn.metrics and scipy.stats serve as the independent truth.
"""

import collections
import re
import string

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from mtl_jax import metrics as M
from mtl_jax.evaluation import summary as S

SEEDS = (0, 1, 2, 3, 4)


def _imbalanced(rng, n, k, p_major=0.8):
  """Labels in [0, k) where class 0 takes about p_major of the mass."""
  p = np.full(k, (1 - p_major) / (k - 1))
  p[0] = p_major
  return rng.choice(k, size=n, p=p)


def _noisy_pred(rng, label, k, p_flip):
  flip = rng.random(label.shape) < p_flip
  return np.where(flip, rng.integers(0, k, size=label.shape), label)


# ----------------------------------------------------------------------------
# Classification against sklearn.


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('k', [2, 3, 5])
def test_classification_matches_sklearn(seed, k):
  rng = np.random.default_rng(seed)
  for n, p_major in ((50, 0.5), (200, 0.9), (7, 0.6)):
    label = _imbalanced(rng, n, k, p_major)
    pred = _noisy_pred(rng, label, k, 0.4)
    assert M.accuracy(pred, label) == pytest.approx(
        sklearn.metrics.accuracy_score(label, pred))
    assert M.matthews_corrcoef(pred, label) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(label, pred), abs=1e-12)
    assert M.macro_f1(pred, label, k) == pytest.approx(
        sklearn.metrics.f1_score(label, pred, average='macro', zero_division=0))
    if k == 2:
      assert M.f1(pred, label) == pytest.approx(
          sklearn.metrics.f1_score(label, pred, zero_division=0))


def test_classification_analytic():
  label = np.array([0, 1, 1, 0, 1, 2, 2])
  assert M.accuracy(label, label) == 1.0
  assert M.macro_f1(label, label, 3) == 1.0
  assert M.matthews_corrcoef(label, label) == pytest.approx(1.0)
  binary = np.array([0, 1, 1, 0, 1])
  assert M.f1(binary, binary) == 1.0
  assert M.accuracy(1 - binary, binary) == 0.0
  assert M.f1(1 - binary, binary) == 0.0
  assert M.matthews_corrcoef(1 - binary, binary) == pytest.approx(-1.0)
  # Constant prediction: MCC undefined -> 0.
  assert M.matthews_corrcoef(np.zeros(5, int), binary) == 0.0
  assert M.matthews_corrcoef(np.ones(5, int), binary) == 0.0
  assert M.matthews_corrcoef(binary, np.ones(5, int)) == 0.0
  # No positive class anywhere: F1 undefined -> 0.
  assert M.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0
  # One positive among 4, predicted right, one false positive: P = 1/2, R = 1.
  assert M.f1(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(2 / 3)
  # A class absent from both sides is left out of the macro mean.
  assert M.macro_f1(np.array([0, 1]), np.array([0, 1]), num_classes=5) == 1.0
  assert isinstance(M.accuracy(binary, binary), float)


def test_macro_f1_rejects_bad_class_ids():
  with pytest.raises(ValueError, match='outside'):
    M.macro_f1(np.array([0, 3]), np.array([0, 1]), 3)
  with pytest.raises(ValueError, match='integer'):
    M.macro_f1(np.array([0.0, 1.0]), np.array([0, 1]), 2)


# ----------------------------------------------------------------------------
# Regression against scipy.


@pytest.mark.parametrize('seed', SEEDS)
def test_regression_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  n = 100
  target = rng.normal(size=n)
  pred = 0.6 * target + rng.normal(size=n)
  assert M.pearson(pred, target) == pytest.approx(scipy.stats.pearsonr(pred, target)[0])
  assert M.spearman(pred, target) == pytest.approx(
      scipy.stats.spearmanr(pred, target).statistic)
  assert M.mse(pred, target) == pytest.approx(
      sklearn.metrics.mean_squared_error(target, pred))
  # Heavy ties on both sides (STS-B gold scores are on a coarse grid).
  target_t = rng.integers(0, 6, size=n).astype(float)
  pred_t = np.round(target_t + rng.normal(size=n))
  assert M.spearman(pred_t, target_t) == pytest.approx(
      scipy.stats.spearmanr(pred_t, target_t).statistic)
  assert M.pearson(pred_t, target_t) == pytest.approx(
      scipy.stats.pearsonr(pred_t, target_t)[0])


def test_average_ranks_match_scipy():
  x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
  np.testing.assert_allclose(M._average_ranks(x), scipy.stats.rankdata(x))


def test_regression_analytic():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  assert M.pearson(x, x) == pytest.approx(1.0)
  assert M.pearson(-x, x) == pytest.approx(-1.0)
  assert M.spearman(x ** 3, x) == pytest.approx(1.0)
  assert M.mse(x, x) == 0.0
  assert M.mse(x + 2, x) == pytest.approx(4.0)
  # Constant side: 0.0, not NaN.
  const = np.full(4, 0.1)
  assert M.pearson(const, x) == 0.0
  assert M.spearman(x, const) == 0.0


# ----------------------------------------------------------------------------
# Token level.


def _token_batch(rng, n, s, k):
  label = rng.integers(0, k, size=(n, s))
  pred = _noisy_pred(rng, label, k, 0.3)
  lengths = rng.integers(1, s + 1, size=n)
  mask = np.arange(s)[None, :] < lengths[:, None]
  # Padding positions hold garbage that must be ignored.
  label = np.where(mask, label, -100)
  return pred, label, mask


@pytest.mark.parametrize('seed', SEEDS)
def test_token_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  pred, label, mask = _token_batch(rng, 12, 9, 6)
  assert M.token_accuracy(pred, label, mask) == pytest.approx(
      sklearn.metrics.accuracy_score(label[mask], pred[mask]))
  assert M.token_macro_f1(pred, label, mask, 6) == pytest.approx(
      sklearn.metrics.f1_score(label[mask], pred[mask], average='macro', zero_division=0))


TAGS = ('O', 'B-NP', 'I-NP', 'B-VP', 'I-VP', 'B-PP')
T = {name: i for i, name in enumerate(TAGS)}


def _ids(*names):
  return [T[n] for n in names]


def test_chunk_f1_hand_computed():
  # Sentence 2 is 3 words long; its last two positions are padding.
  gold = np.array([
      _ids('B-NP', 'I-NP', 'B-VP', 'B-PP', 'B-NP'),
      _ids('B-NP', 'B-VP', 'I-VP', 'O', 'O'),
  ])
  pred = np.array([
      _ids('B-NP', 'B-NP', 'B-VP', 'B-PP', 'I-NP'),
      _ids('B-NP', 'I-VP', 'I-VP', 'B-NP', 'I-NP'),
  ])
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
  # Gold: s1 NP[0,2) VP[2,3) PP[3,4) NP[4,5); s2 NP[0,1) VP[1,3)         -> 6 chunks
  # Pred: s1 NP[0,1) NP[1,2) VP[2,3) PP[3,4) NP[4,5) ('B-NP' after 'B-NP' splits,
  #       'I-NP' after 'B-PP' opens an NP); s2 NP[0,1) VP[1,3) ('I-VP' after 'B-NP'
  #       opens a VP)                                                       -> 7 chunks
  # Correct: s1 VP, PP, NP[4,5); s2 NP, VP                                  -> 5
  p, r = 5 / 7, 5 / 6
  assert M.chunk_f1(pred, gold, mask, TAGS) == pytest.approx(2 * p * r / (p + r))
  assert M.chunk_f1(gold, gold, mask, TAGS) == 1.0
  # Unmasking s2's padding adds the predicted chunk NP[3,5) there: 5 of 8 correct.
  p = 5 / 8
  assert M.chunk_f1(pred, gold, np.ones_like(mask), TAGS) == pytest.approx(2 * p * r / (p + r))
  all_o = np.zeros_like(gold)
  assert M.chunk_f1(all_o, gold, mask, TAGS) == 0.0
  assert M.chunk_f1(all_o, all_o, mask, TAGS) == 0.0  # no chunks at all, as conlleval


def test_chunk_spans_conlleval_rules():
  bio = M._parse_bio(TAGS)
  # I-X that does not continue X starts a chunk; O closes; B-X after I-X splits.
  tags = _ids('I-NP', 'I-NP', 'I-VP', 'O', 'I-VP', 'B-VP', 'I-VP', 'B-NP')
  assert M._spans(tags, bio) == [(0, 2, 'NP'), (2, 3, 'VP'), (4, 5, 'VP'), (5, 7, 'VP'),
                                 (7, 8, 'NP')]


def _reference_chunks(tags):
  """Independent chunk extraction with conlleval's startOfChunk/endOfChunk rules."""
  chunks, start = set(), None
  prev_tag, prev_type = 'O', ''
  for i, name in enumerate(list(tags) + ['O']):
    tag, typ = (name.split('-', 1) + [''])[:2] if name != 'O' else ('O', '')
    end = (prev_tag == 'B' and tag in ('B', 'O')) or (prev_tag == 'I' and tag in ('B', 'O')) \
        or (prev_tag != 'O' and prev_type != typ)
    begin = tag == 'B' or (prev_tag == 'O' and tag == 'I') \
        or (tag != 'O' and prev_type != typ)
    if end and start is not None:
      chunks.add((start, i, prev_type))
      start = None
    if begin:
      start = i
    prev_tag, prev_type = tag, typ
  return chunks


def _reference_chunk_f1(pred, label, mask, tag_names):
  found = gold = correct = 0
  for p, l, m in zip(pred, label, mask):
    ps = _reference_chunks([tag_names[t] for t in p[m]])
    gs = _reference_chunks([tag_names[t] for t in l[m]])
    found, gold, correct = found + len(ps), gold + len(gs), correct + len(ps & gs)
  prec = correct / found if found else 0.0
  rec = correct / gold if gold else 0.0
  return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


@pytest.mark.parametrize('seed', SEEDS)
def test_chunk_f1_matches_reference(seed):
  rng = np.random.default_rng(seed)
  pred, label, mask = _token_batch(rng, 20, 12, len(TAGS))
  label = np.where(mask, label, 0)
  got = M.chunk_f1(pred, label, mask, TAGS)
  assert got == pytest.approx(_reference_chunk_f1(pred, label, mask, TAGS))
  assert 0.0 < got < 1.0


def test_chunk_f1_rejects_non_bio_tags():
  tags = np.zeros((1, 2), int)
  with pytest.raises(ValueError, match='BIO'):
    M.chunk_f1(tags, tags, np.ones((1, 2), bool), ('NN', 'VB'))
  with pytest.raises(ValueError, match='outside'):
    M.chunk_f1(tags + 7, tags, np.ones((1, 2), bool), TAGS)


# ----------------------------------------------------------------------------
# Input errors and the registry.


def test_empty_and_malformed_inputs():
  empty = np.array([], dtype=int)
  for fn in (M.accuracy, M.f1, M.matthews_corrcoef, M.pearson, M.spearman, M.mse):
    with pytest.raises(ValueError, match='No labelled'):
      fn(empty, empty)
  with pytest.raises(ValueError, match='No labelled'):
    M.macro_f1(empty, empty, 3)
  z = np.zeros((2, 3), int)
  with pytest.raises(ValueError, match='No labelled tokens'):
    M.token_accuracy(z, z, np.zeros((2, 3), bool))
  with pytest.raises(ValueError, match='No labelled tokens'):
    M.chunk_f1(z, z, np.zeros((2, 3), bool), TAGS)
  with pytest.raises(ValueError, match='length'):
    M.accuracy(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match='1-D'):
    M.accuracy(z, z)
  with pytest.raises(ValueError, match='same shape'):
    M.token_accuracy(z, z, np.ones((2, 4), bool))


def test_compute_metrics():
  rng = np.random.default_rng(0)
  label = rng.integers(0, 3, size=40)
  pred = _noisy_pred(rng, label, 3, 0.5)
  out = M.compute_metrics(['accuracy', 'macro_f1', 'matthews'],
                          {'pred': pred, 'label': label, 'num_classes': 3})
  assert list(out) == ['accuracy', 'macro_f1', 'matthews']
  assert out['accuracy'] == M.accuracy(pred, label)
  assert out['macro_f1'] == M.macro_f1(pred, label, 3)
  assert all(isinstance(v, float) for v in out.values())

  tp, tl, tm = _token_batch(rng, 4, 6, len(TAGS))
  out = M.compute_metrics(['chunk_f1', 'token_accuracy', 'token_macro_f1'],
                          {'pred': tp, 'label': np.where(tm, tl, 0), 'mask': tm,
                           'tag_names': TAGS, 'num_classes': len(TAGS)})
  assert out['token_accuracy'] == M.token_accuracy(tp, tl, tm)

  with pytest.raises(ValueError,
                     match='known metrics: acc, acc_norm, accuracy, answer_exact_match'):
    M.compute_metrics(['accuracy', 'bleu'], {'pred': pred, 'label': label})
  with pytest.raises(ValueError, match="missing \\['num_classes'\\]"):
    M.compute_metrics(['macro_f1'], {'pred': pred, 'label': label})
  with pytest.raises(ValueError, match='Unknown metric'):
    M.get_metric('bleu')


def test_registry():
  assert set(M.METRICS) == {'accuracy', 'f1', 'macro_f1', 'matthews', 'pearson', 'spearman',
                            'token_accuracy', 'token_macro_f1', 'chunk_f1', 'mse',
                            'exact_match', 'answer_exact_match', 'answer_f1', 'acc', 'acc_norm',
                            'bits_per_byte', 'loss'}
  lower = {'mse', 'bits_per_byte', 'loss'}
  assert not any(M.HIGHER_IS_BETTER[k] for k in lower)
  assert all(v for k, v in M.HIGHER_IS_BETTER.items() if k not in lower)
  x = np.array([0, 1, 1])
  assert M.METRICS['accuracy'](x, x) == 1.0


# ----------------------------------------------------------------------------
# Summary.


def test_delta_m_hand_computed():
  mtl = {'sst': 0.90, 'cola': 0.40, 'sts_mse': 0.50}
  stl = {'sst': 0.80, 'cola': 0.50, 'sts_mse': 0.40}
  hib = {'sst': True, 'cola': True, 'sts_mse': False}
  # sst: +0.10/0.80 = +12.5 %; cola: -0.10/0.50 = -20 %; mse (lower better):
  # -(0.50-0.40)/0.40 = -25 %.  Mean: (12.5 - 20 - 25) / 3 = -10.8333...
  deltas = S.per_task_delta(mtl, stl, hib)
  assert deltas == pytest.approx({'sst': 12.5, 'cola': -20.0, 'sts_mse': -25.0})
  assert S.delta_m(mtl, stl, hib) == pytest.approx(-32.5 / 3)
  # Negative baseline (MCC): normalised by |stl|.
  assert S.delta_m({'m': -0.1}, {'m': -0.2}, {'m': True}) == pytest.approx(50.0)
  assert S.delta_m(stl, stl, hib) == 0.0


def test_delta_m_errors():
  with pytest.raises(ValueError, match="'cola'"):
    S.delta_m({'cola': 0.3}, {'cola': 0.0}, {'cola': True})
  with pytest.raises(ValueError, match=r"only in MTL \['a'\].*only in STL \['b'\]"):
    S.delta_m({'a': 1.0}, {'b': 1.0}, {'a': True, 'b': True})
  with pytest.raises(ValueError, match=r"\['a'\]"):
    S.delta_m({'a': 1.0}, {'a': 2.0}, {})
  with pytest.raises(ValueError, match='No tasks'):
    S.delta_m({}, {}, {})


def test_format_table():
  mtl = {'sst': {'accuracy': 0.9, 'f1': 0.88},
         'stsb': {'pearson': 0.85, 'mse': 0.5},
         'cola': {'matthews': 0.3}}
  stl = {'sst': {'accuracy': 0.8, 'f1': 0.9},
         'stsb': {'pearson': 0.8, 'mse': 0.4},
         'cola': {'matthews': 0.0}}
  primary = {'sst': 'accuracy', 'stsb': 'mse', 'cola': 'matthews'}
  text = S.format_table(mtl, stl, primary)
  for task in mtl:
    assert task in text
  # Δm over sst (+12.5) and stsb (mse, lower better: -25); cola has a zero baseline.
  assert 'Δm%: -6.25 over 2 task(s)' in text
  assert 'left out (no or zero STL baseline): cola' in text
  assert '+12.50' in text and '-25.00' in text and 'n/a' in text
  assert text == S.format_table(mtl, stl, primary)  # deterministic
  body = text.splitlines()[:2 + 5]
  assert len({len(l) for l in body[:2]}) == 1  # header and rule line up

  only = S.format_table(mtl, None, primary)
  assert all(task in only for task in mtl) and 'Δm%' in only and 'STL' not in only

  with pytest.raises(ValueError, match='primary'):
    S.format_table(mtl, stl, {'sst': 'accuracy'})


def test_learnable_bar_and_the_delta_m_over_learnable_tasks():
  # Majority rate of the present labels (3 of 5 are class 1; the masked-out 2s don't count).
  labels, mask = np.array([1, 1, 0, 2, 1, 2, 2]), np.array([1, 1, 1, 1, 1, 0, 0])
  assert S.learnable_bar('accuracy', labels, mask) == pytest.approx(0.6 + 0.05)
  tags = np.array([[0, 0, 3], [0, 1, 1]])
  assert S.learnable_bar('token_accuracy', tags, np.array([[1, 1, 0], [1, 1, 1]])) == \
      pytest.approx(3 / 5 + 0.05)
  assert S.learnable_bar('pearson', labels, mask) == 0.5
  assert S.learnable_bar('chunk_f1', labels, mask) is None

  mtl = {'a': {'accuracy': 0.9}, 'b': {'accuracy': 0.6}, 'sim': {'pearson': 0.3}}
  stl = {'a': {'accuracy': 0.8}, 'b': {'accuracy': 0.75}, 'sim': {'pearson': 0.15}}
  primary = {t: next(iter(v)) for t, v in mtl.items()}
  learnable = {'a': True, 'b': True, 'sim': False}
  text = S.format_table(mtl, stl, primary, learnable=learnable)
  # All three: (+12.5 - 20 + 100) / 3; learnable only: (+12.5 - 20) / 2.
  assert 'Δm%: +30.83 over 3 task(s)' in text
  assert 'Δm%: -3.75 over the 2 task(s) learnable alone; not learnable alone' in text
  assert text.rstrip().splitlines()[-2].endswith(': sim')
  assert 'learnable alone' not in S.format_table(mtl, stl, primary,
                                                 learnable=dict.fromkeys(mtl, True))


# --- Text-to-text tasks -------------------------------------------------------------------


def _squad_normalize(s):
  """SQuAD v1.1's official evaluate script's normalize_answer, as published."""
  s = s.lower()
  s = ''.join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r'\b(a|an|the)\b', ' ', s)
  return ' '.join(s.split())


def _squad_f1(prediction, truth):
  pred, gold = _squad_normalize(prediction).split(), _squad_normalize(truth).split()
  common = collections.Counter(pred) & collections.Counter(gold)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(gold)
  return 2 * precision * recall / (precision + recall)


def test_answer_metrics_equal_squad_s_script():
  answers = ['The Eiffel Tower!', 'paris', 'a cat, the cat', 'Richard  Nixon', 'an answer',
             'Edwin Hubble telescope', 'x']
  references = ['Eiffel tower', ['Lyon', 'Paris.'], 'cat cat', 'Nixon', 'The answer',
                'Hubble', 'y z']
  refs = [[r] if isinstance(r, str) else r for r in references]
  for text in answers + ['Ünïcödé — «quoted»', ' The  the A an ']:
    assert M.normalize_answer(text) == _squad_normalize(text)
  em = np.mean([any(_squad_normalize(a) == _squad_normalize(r) for r in rs)
                for a, rs in zip(answers, refs)])
  f1 = np.mean([max(_squad_f1(a, r) for r in rs) for a, rs in zip(answers, refs)])
  assert M.answer_exact_match(answers, references) == pytest.approx(em) == 4 / 7
  assert M.answer_f1(answers, references) == pytest.approx(f1)
  assert M.answer_f1([''], ['']) == 1.0 and M.answer_f1(['the'], ['cat']) == 0.0


def test_rank_classification_and_bits_per_byte():
  ll = np.array([[-3.0, -2.0, -9.0], [-1.0, -4.0, -2.0], [-6.0, -8.0, -5.0]])
  label = np.array([1, 2, 0])
  assert M.rank_accuracy(ll, label) == pytest.approx(
      sklearn.metrics.accuracy_score(label, ll.argmax(1)))
  # Per byte: row 1's option 2 (-2 over 10 bytes) beats option 0 (-1 over 1 byte); row 2's
  # option 0 (-6 / 12) beats option 2 (-5 / 2).
  lengths = np.array([[3, 4, 1], [1, 1, 10], [12, 16, 2]])
  assert M.rank_accuracy_norm(ll, lengths, label) == pytest.approx(
      sklearn.metrics.accuracy_score(label, (ll / lengths).argmax(1))) == 1.0
  assert M.get_metric('acc_norm').inputs == ('loglikelihoods', 'option_bytes', 'label')
  nats, num_bytes = np.array([2.0, 3.5]), np.array([4, 6])
  assert M.bits_per_byte(nats, num_bytes) == pytest.approx(5.5 / (np.log(2) * 10))
  assert not M.get_metric('bits_per_byte').higher_is_better
  # The mean NLL per token: 5.5 nats over 3 + 5 tokens, not the mean of the per-row means.
  assert M.token_loss(nats, np.array([3, 5])) == pytest.approx(5.5 / 8)
  with pytest.raises(ValueError, match='no tokens'):
    M.token_loss(nats, np.zeros(2))
  with pytest.raises(ValueError, match='at least one byte'):
    M.rank_accuracy_norm(ll, np.zeros((3, 3)), label)
