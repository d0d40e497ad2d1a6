"""GLUE-style evaluation metrics in plain numpy, and a registry to compute them by name.

Sequence-level metrics take 1-D arrays of predictions and labels that are already
restricted to the labelled examples. Token-level metrics take (n, S) arrays and an
(n, S) boolean mask that selects the scored positions (e.g. the first sub-token of
each word). Every metric returns a Python float; empty inputs raise ValueError.

Conventions where a metric is undefined (0/0) follow the reference implementations
the numbers are compared with (sklearn.metrics, scipy.stats, conlleval) and are
0.0, never NaN, so that reports and averages stay finite:

  f1                 0.0 when neither predictions nor labels contain the class 1.
  matthews           0.0 when either side is constant.
  pearson, spearman  0.0 when either side is constant (scipy returns NaN here).
  chunk_f1           0.0 when there are no predicted or no gold chunks.

Text-to-text tasks are scored on generated answers (answer_exact_match, answer_f1 after
SQuAD's normalisation), on the log-likelihood of each option (acc, acc_norm: rank
classification as lm-evaluation-harness does it) and on bits per byte.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

MetricFn = Callable[..., float]


# ----------------------------------------------------------------------------
# Input checks.


def _as_pair(pred, label, what: str = 'label') -> tuple[np.ndarray, np.ndarray]:
  """Returns pred and label as 1-D arrays of the same, non-zero length."""
  pred, label = np.asarray(pred), np.asarray(label)
  if pred.ndim != 1 or label.ndim != 1:
    raise ValueError(f'Expected 1-D pred and {what}, got shapes {pred.shape} and '
                     f'{label.shape}.')
  if pred.shape != label.shape:
    raise ValueError(f'pred and {what} differ in length: {pred.shape[0]} vs '
                     f'{label.shape[0]}.')
  if pred.size == 0:
    raise ValueError('No labelled examples to score: pred and '
                     f'{what} are empty.')
  return pred, label


def _masked(pred, label, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Checks token-level inputs; returns pred, label (n, S) and mask (n, S) bool."""
  pred, label, mask = np.asarray(pred), np.asarray(label), np.asarray(mask)
  if pred.ndim != 2:
    raise ValueError(f'Token metrics expect pred of shape (n, S), got {pred.shape}.')
  if pred.shape != label.shape or pred.shape != mask.shape:
    raise ValueError('pred, label and mask must have the same shape, got '
                     f'{pred.shape}, {label.shape} and {mask.shape}.')
  mask = mask.astype(bool)
  if not mask.any():
    raise ValueError('No labelled tokens to score: the mask selects no position.')
  return pred, label, mask


def _check_classes(values: np.ndarray, num_classes: int, what: str) -> np.ndarray:
  if not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
    raise ValueError(f'{what} must hold integer class ids, got dtype {values.dtype}.')
  values = values.astype(np.int64)
  if values.min() < 0 or values.max() >= num_classes:
    raise ValueError(f'{what} holds class ids outside [0, {num_classes}): '
                     f'min {values.min()}, max {values.max()}.')
  return values


# ----------------------------------------------------------------------------
# Classification.


def accuracy(pred, label) -> float:
  """Fraction of examples where pred == label."""
  pred, label = _as_pair(pred, label)
  return float(np.mean(pred == label))


def f1(pred, label) -> float:
  """Binary F1 of the positive class 1, as GLUE scores MRPC and QQP.

  Any other value counts as negative. 0.0 when class 1 occurs in neither pred nor
  label (sklearn's zero_division=0).
  """
  pred, label = _as_pair(pred, label)
  p, t = pred == 1, label == 1
  tp = np.sum(p & t)
  denom = np.sum(p) + np.sum(t)  # = 2 tp + fp + fn
  return float(2 * tp / denom) if denom else 0.0


def exact_match(pred, label, group) -> float:
  """Fraction of groups whose rows are all predicted right: SuperGLUE's EM for MultiRC,
  where a question counts only when each of its answer options is (Khashabi et al. 2018).

  `group`: (n,) the group of each row, any values that compare equal within a group.
  """
  pred, label = _as_pair(pred, label)
  group = np.asarray(group)
  if group.shape != pred.shape:
    raise ValueError(f'group must have one entry per row: shape {group.shape}, pred '
                     f'{pred.shape}.')
  _, inverse = np.unique(group, return_inverse=True)
  wrong = np.bincount(inverse.ravel(), weights=pred != label)
  return float(np.mean(wrong == 0))


def _per_class_f1(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
  """Unweighted mean F1 over the classes that occur in pred or label."""
  pred = _check_classes(pred, num_classes, 'pred')
  label = _check_classes(label, num_classes, 'label')
  tp = np.bincount(label[pred == label], minlength=num_classes)
  n_pred = np.bincount(pred, minlength=num_classes)
  n_true = np.bincount(label, minlength=num_classes)
  denom = n_pred + n_true  # per class: 2 tp + fp + fn
  present = denom > 0
  return float(np.mean(2 * tp[present] / denom[present]))


def macro_f1(pred, label, num_classes: int) -> float:
  """Unweighted mean of the per-class F1 scores.

  Classes absent from both pred and label have an undefined F1 and are left out of
  the mean, as sklearn's f1_score(average='macro') does without `labels`. Class ids
  must lie in [0, num_classes).
  """
  pred, label = _as_pair(pred, label)
  return _per_class_f1(pred, label, num_classes)


def matthews_corrcoef(pred, label) -> float:
  """Matthews correlation coefficient, multiclass (Gorodkin's R_K, as sklearn).

  With confusion matrix C (rows true, columns predicted), s = C.sum(), c = trace(C),
  t = row sums and p = column sums:
      MCC = (c s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)),
  which reduces to the usual binary formula. 0.0 when the denominator is zero, i.e.
  when pred or label is constant.
  """
  pred, label = _as_pair(pred, label)
  classes, idx = np.unique(np.concatenate([label, pred]), return_inverse=True)
  k, n = len(classes), len(label)
  t_idx, p_idx = idx[:n], idx[n:]
  t = np.bincount(t_idx, minlength=k).astype(np.float64)
  p = np.bincount(p_idx, minlength=k).astype(np.float64)
  c = float(np.sum(t_idx == p_idx))
  s = float(n)
  cov_tp = c * s - t @ p
  cov_pp = s * s - p @ p
  cov_tt = s * s - t @ t
  if cov_pp == 0 or cov_tt == 0:
    return 0.0
  return float(cov_tp / np.sqrt(cov_pp * cov_tt))


# ----------------------------------------------------------------------------
# Regression.


def _is_constant(x: np.ndarray) -> bool:
  return bool(np.all(x == x[0]))


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
  if _is_constant(x) or _is_constant(y):
    return 0.0
  x = x.astype(np.float64) - np.mean(x, dtype=np.float64)
  y = y.astype(np.float64) - np.mean(y, dtype=np.float64)
  r = (x @ y) / np.sqrt((x @ x) * (y @ y))
  return float(np.clip(r, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks; tied values share the mean of the ranks they span."""
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)  # last rank of each group of equal values
  starts = ends - counts + 1  # first rank of each group
  return ((starts + ends) / 2.0)[inverse]


def pearson(pred, target) -> float:
  """Pearson correlation. 0.0 (not NaN) when pred or target is constant."""
  pred, target = _as_pair(pred, target, 'target')
  return _correlation(pred, target)


def spearman(pred, target) -> float:
  """Spearman rank correlation, tied values get their average rank.

  0.0 (not NaN) when pred or target is constant.
  """
  pred, target = _as_pair(pred, target, 'target')
  return _correlation(_average_ranks(pred), _average_ranks(target))


def mse(pred, target) -> float:
  """Mean squared error (lower is better)."""
  pred, target = _as_pair(pred, target, 'target')
  diff = pred.astype(np.float64) - target.astype(np.float64)
  return float(np.mean(diff * diff))


# ----------------------------------------------------------------------------
# Token level.


def token_accuracy(pred, label, mask) -> float:
  """Accuracy over the positions where mask is True; pred, label, mask are (n, S)."""
  pred, label, mask = _masked(pred, label, mask)
  return float(np.mean(pred[mask] == label[mask]))


def token_macro_f1(pred, label, mask, num_classes: int) -> float:
  """macro_f1 over the positions where mask is True; pred, label, mask are (n, S)."""
  pred, label, mask = _masked(pred, label, mask)
  return _per_class_f1(pred[mask], label[mask], num_classes)


def _parse_bio(tag_names: Sequence[str]) -> list[tuple[str, str]]:
  """Splits every tag name into (prefix, type): ('B', 'NP'), ('I', 'NP'), ('O', '')."""
  parsed = []
  for name in tag_names:
    if name == 'O':
      parsed.append(('O', ''))
    elif len(name) > 2 and name[:2] in ('B-', 'I-'):
      parsed.append((name[0], name[2:]))
    else:
      raise ValueError(
          f'chunk_f1 needs BIO tags (\'O\', \'B-X\', \'I-X\'), got {name!r}; for other '
          'tag sets use token_accuracy or token_macro_f1.')
  return parsed


def _spans(tags: list[int], bio: list[tuple[str, str]]) -> list[tuple[int, int, str]]:
  """(start, end exclusive, type) of the chunks in one sentence of tag ids.

  'B-X' always opens a chunk; 'I-X' continues the open chunk when it has type X and
  otherwise opens a new one (as conlleval does); 'O' closes the open chunk.
  """
  spans = []
  start, kind = None, None
  for i, tag in enumerate(tags):
    prefix, typ = bio[tag]
    if prefix == 'I' and kind == typ:
      continue
    if kind is not None:
      spans.append((start, i, kind))
    start, kind = (i, typ) if prefix != 'O' else (None, None)
  if kind is not None:
    spans.append((start, len(tags), kind))
  return spans


def chunk_f1(pred, label, mask, tag_names: Sequence[str]) -> float:
  """CoNLL span-level micro F1 over BIO tags (conlleval's FB1, as a fraction).

  Each row's masked positions, in order, form one sentence; chunks never cross rows.
  A predicted chunk is correct only if its type, start and end all match a gold
  chunk. 0.0 when there are no predicted or no gold chunks (as conlleval).

  Args:
    pred, label: (n, S) tag ids.
    mask: (n, S) bool, True at the scored positions (one per word).
    tag_names: tag id -> name, each 'O', 'B-X' or 'I-X'.
  """
  pred, label, mask = _masked(pred, label, mask)
  bio = _parse_bio(tag_names)
  for what, ids in (('pred', pred[mask]), ('label', label[mask])):
    if ids.min() < 0 or ids.max() >= len(bio):
      raise ValueError(f'{what} holds tag ids outside [0, {len(bio)}) = tag_names '
                       f'range: min {ids.min()}, max {ids.max()}.')
  n_pred = n_gold = n_correct = 0
  for p_row, l_row, m_row in zip(pred, label, mask):
    p_spans = set(_spans(p_row[m_row].tolist(), bio))
    g_spans = set(_spans(l_row[m_row].tolist(), bio))
    n_pred += len(p_spans)
    n_gold += len(g_spans)
    n_correct += len(p_spans & g_spans)
  if n_pred == 0 or n_gold == 0 or n_correct == 0:
    return 0.0
  precision, recall = n_correct / n_pred, n_correct / n_gold
  return float(2 * precision * recall / (precision + recall))


# ----------------------------------------------------------------------------
# Text-to-text tasks: generated answers, ranked options, bits per byte.


ARTICLES = frozenset(('a', 'an', 'the'))


def normalize_answer(text: str) -> str:
  """SQuAD's answer normalisation (its official evaluation script's): lowercase, drop
  ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
  text = ''.join(c for c in text.lower() if c not in _PUNCTUATION)
  return ' '.join(w for w in text.split() if w not in ARTICLES)


_PUNCTUATION = frozenset('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')


def _references(references) -> list[list[str]]:
  return [[r] if isinstance(r, str) else list(r) for r in references]


def answer_exact_match(text: Sequence[str], references: Sequence) -> float:
  """Mean over examples of whether the normalised answer equals a normalised reference
  (each example's references: a string, or a list of acceptable ones)."""
  refs = _references(references)
  if len(text) != len(refs) or not refs:
    raise ValueError(f'{len(text)} answers for {len(refs)} references.')
  return float(np.mean([any(normalize_answer(t) == normalize_answer(r) for r in rs)
                        for t, rs in zip(text, refs)]))


def _token_f1(prediction: str, reference: str) -> float:
  pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
  if not pred or not gold:
    return float(pred == gold)
  common = sum(min(pred.count(w), gold.count(w)) for w in set(pred) & set(gold))
  if not common:
    return 0.0
  precision, recall = common / len(pred), common / len(gold)
  return 2 * precision * recall / (precision + recall)


def answer_f1(text: Sequence[str], references: Sequence) -> float:
  """Mean over examples of SQuAD's token F1 (bag of normalised words) against the best
  reference; 1 when both are empty, 0 when one is."""
  refs = _references(references)
  if len(text) != len(refs) or not refs:
    raise ValueError(f'{len(text)} answers for {len(refs)} references.')
  return float(np.mean([max(_token_f1(t, r) for r in rs) for t, rs in zip(text, refs)]))


def rank_accuracy(loglikelihoods, label) -> float:
  """Rank classification (lm-evaluation-harness's acc): the option whose continuation has
  the highest log-likelihood (n, C) is the prediction; ties go to the first."""
  scores, gold = np.asarray(loglikelihoods, np.float64), np.asarray(label)
  if scores.ndim != 2 or scores.shape[0] != gold.shape[0] or not gold.size:
    raise ValueError(f'log-likelihoods {scores.shape} do not fit labels {gold.shape}.')
  return float(np.mean(np.argmax(scores, axis=1) == gold))


def rank_accuracy_norm(loglikelihoods, option_bytes, label) -> float:
  """acc_norm: rank_accuracy of each option's log-likelihood divided by its length in UTF-8
  bytes (n, C). (lm-evaluation-harness divides by len(option) in characters: the same for
  ASCII options.)"""
  lengths = np.asarray(option_bytes, np.float64)
  if np.any(lengths <= 0):
    raise ValueError('every option needs at least one byte.')
  return rank_accuracy(np.asarray(loglikelihoods, np.float64) / lengths, label)


def bits_per_byte(nats, num_bytes) -> float:
  """Σ nats / (ln 2 · Σ bytes): the text's negative log-likelihood in bits per UTF-8 byte
  of the text it scores, comparable across tokenizers."""
  total = float(np.sum(num_bytes))
  if total <= 0:
    raise ValueError('bits per byte of no text.')
  return float(np.sum(nats)) / (np.log(2.0) * total)


def token_loss(nats, tokens) -> float:
  """Σ nats / Σ tokens: the mean negative log-likelihood per target token."""
  total = float(np.sum(tokens))
  if total <= 0:
    raise ValueError('the loss of no tokens.')
  return float(np.sum(nats)) / total


# ----------------------------------------------------------------------------
# Registry.


@dataclasses.dataclass(frozen=True)
class Metric:
  """A registered metric.

  Attributes:
    fn: the function; called with the `inputs` entries of the outputs, in order.
    higher_is_better: False for losses/errors (mse).
    inputs: keys of the `outputs` dict (see compute_metrics) that fn takes.
  """
  fn: MetricFn
  higher_is_better: bool
  inputs: tuple[str, ...] = ('pred', 'label')

  def __call__(self, *args, **kwargs) -> float:
    return self.fn(*args, **kwargs)


_TOKEN = ('pred', 'label', 'mask')

METRICS: dict[str, Metric] = {
    'accuracy': Metric(accuracy, True),
    'f1': Metric(f1, True),
    'exact_match': Metric(exact_match, True, ('pred', 'label', 'group')),
    'macro_f1': Metric(macro_f1, True, ('pred', 'label', 'num_classes')),
    'matthews': Metric(matthews_corrcoef, True),
    'pearson': Metric(pearson, True),
    'spearman': Metric(spearman, True),
    'mse': Metric(mse, False),
    'token_accuracy': Metric(token_accuracy, True, _TOKEN),
    'token_macro_f1': Metric(token_macro_f1, True, _TOKEN + ('num_classes',)),
    'chunk_f1': Metric(chunk_f1, True, _TOKEN + ('tag_names',)),
    'answer_exact_match': Metric(answer_exact_match, True, ('text', 'references')),
    'answer_f1': Metric(answer_f1, True, ('text', 'references')),
    'acc': Metric(rank_accuracy, True, ('loglikelihoods', 'label')),
    'acc_norm': Metric(rank_accuracy_norm, True, ('loglikelihoods', 'option_bytes', 'label')),
    'bits_per_byte': Metric(bits_per_byte, False, ('nats', 'bytes')),
    'loss': Metric(token_loss, False, ('nats', 'tokens')),
}

HIGHER_IS_BETTER: dict[str, bool] = {name: m.higher_is_better for name, m in METRICS.items()}


def get_metric(name: str) -> Metric:
  """The registered metric `name`; ValueError listing the known names otherwise."""
  try:
    return METRICS[name]
  except KeyError:
    raise ValueError(f'Unknown metric {name!r}; known metrics: '
                     f'{", ".join(sorted(METRICS))}.') from None


def compute_metrics(names: Sequence[str], outputs: Mapping[str, Any]) -> dict[str, float]:
  """Computes the named metrics from one task's evaluation outputs.

  Args:
    names: metric names, keys of METRICS.
    outputs: 'pred' and 'label' (1-D, or (n, S) for token metrics), plus what the
      metrics need: 'mask' for token metrics, 'num_classes' for macro F1s,
      'tag_names' for chunk_f1 and 'group' (each row's group) for exact_match.

  Returns:
    {name: value}, in the order of `names`.
  """
  unknown = [n for n in names if n not in METRICS]
  if unknown:
    raise ValueError(f'Unknown metric(s) {unknown}; known metrics: '
                     f'{", ".join(sorted(METRICS))}.')
  results = {}
  for name in names:
    metric = METRICS[name]
    missing = [k for k in metric.inputs if outputs.get(k) is None]
    if missing:
      raise ValueError(f'Metric {name!r} needs outputs {list(metric.inputs)}; '
                       f'missing {missing}.')
    results[name] = metric.fn(*(outputs[k] for k in metric.inputs))
  return results
