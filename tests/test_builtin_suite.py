"""Tests of the built-in suite. Every label is re-derived here from the generated WORDS, with a
small tagger and parser of our own and the exported lexicon, never through the generator's
structures."""

import collections
import hashlib
import json
import math

import pytest

from experiments.configs import default
from mtl_jax.config import validate
from mtl_jax.errors import ConfigError
from mtl_jax.data import builtin_suite as bs
from mtl_jax.data import builtin_tfds

L = bs.LEXICON
N = 300  # examples per task for the rule checks
NEGATORS = {'not', 'never'}  # as documented


def _gen(task, n=N, seed=0, relatedness=0.5, version=1):
  return bs.generate_examples(task, n, seed, relatedness, version)


@pytest.fixture(scope='module', params=bs.SUITE_VERSIONS, ids=lambda v: f'v{v}')
def singles(request):
  return [e for t in bs.SINGLE_TASKS for e in _gen(t, N, seed=7, version=request.param)]


@pytest.fixture(scope='module')
def pairs():
  return [e for t in bs.PAIR_TASKS for e in _gen(t, 2 * N, seed=7)]


# --- an independent tagger and parser ----------------------------------------------------------

def _pos(w):
  return L[w].pos


def _tags(words):
  """POS from the left context: a homograph after a determiner or adjective is a NOUN, else
  (after an auxiliary, negator or adverb) a VERB; every other word has its lexicon tag."""
  tags = []
  for w in words:
    noun_use = w in bs.HOMOGRAPHS and tags and tags[-1] in ('DET', 'ADJ')
    tags.append('NOUN' if noun_use else _pos(w))
  return tags


def _split_clauses(words):
  """Drops the final '.', and the ',' before 'but'; splits at the conjunction."""
  assert words[-1] == '.'
  clauses, cur = [], []
  for w in words[:-1]:
    if _pos(w) == 'CCONJ':
      clauses.append(cur)
      cur = []
    elif w != ',':
      cur.append(w)
  clauses.append(cur)
  return clauses


def _parse_np(ws, tags, i, max_adjs=2):
  assert tags[i] == 'DET', ws
  j = i + 1
  adjs = []
  while tags[j] == 'ADJ':
    adjs.append(ws[j])
    j += 1
  assert tags[j] == 'NOUN', ws
  assert len(adjs) <= max_adjs and len(set(adjs)) == len(adjs), ws
  after_det = ws[i + 1]
  assert ws[i] != 'a' or after_det[0] not in 'aeiou', ws  # 'a'/'an' agreement
  assert ws[i] != 'an' or after_det[0] in 'aeiou', ws
  return {'words': tuple(ws[i:j + 1]), 'adjs': adjs, 'noun': ws[j]}, j + 1


def _parse_clause(ws):
  tags = _tags(ws)
  subj, i = _parse_np(ws, tags, 0)
  aux = neg = adv = None
  if tags[i] == 'AUX':
    aux, i = ws[i], i + 1
  if ws[i] in NEGATORS:
    neg, i = ws[i], i + 1
  if tags[i] == 'ADV':
    adv, i = ws[i], i + 1
  verb = ws[i]
  assert tags[i] == 'VERB', ws
  i += 1
  # grammar: base form after an auxiliary, past tense otherwise; 'not' only after an auxiliary
  assert (verb == L[verb].lemma) == (aux is not None), ws
  assert neg != 'not' or aux is not None, ws
  obj, i = _parse_np(ws, tags, i)
  pp = None
  if i < len(ws):
    assert tags[i] == 'ADP', ws
    pnp, j = _parse_np(ws, tags, i + 1, max_adjs=1)
    pp = (ws[i],) + pnp['words']
    i = j
  assert i == len(ws), ws
  assert L[subj['noun']].topic in bs.TOPICS + (None,)
  return {'subj': subj, 'aux': aux, 'neg': neg, 'adv': adv, 'lemma': L[verb].lemma,
          'obj': obj, 'pp': pp, 'pp_noun': pp[-1] if pp else None}


# --- the rules, re-derived -------------------------------------------------------------------

def _chunks(words):
  tags, prev = [], None
  for p in _tags(words):
    if p == 'DET':
      tags.append('B-NP')
      prev = 'NP'
    elif p in ('ADJ', 'NOUN'):
      assert prev == 'NP'
      tags.append('I-NP')
    elif p in ('AUX', 'PART', 'ADV', 'VERB'):
      tags.append('I-VP' if prev == 'VP' else 'B-VP')
      prev = 'VP'
    elif p == 'ADP':
      tags.append('B-PP')
      prev = 'PP'
    else:
      tags.append('O')
      prev = None
  return tags


def _sentiment_score(words):
  """Polarity sum; a negator flips every later word of its clause (clauses end at CCONJ)."""
  score, flipped = 0, False
  for w in words:
    if _pos(w) == 'CCONJ':
      flipped = False
    if w in NEGATORS:
      flipped = True
    score += L[w].polarity * (-1 if flipped else 1)
  return score


def _topic(words):
  nouns = [w for w, t in zip(words, _tags(words)) if t == 'NOUN']
  counts = collections.Counter(L[w].topic for w in nouns if L[w].topic)
  best = max(counts.values())
  winners = [t for t, c in counts.items() if c == best]
  if len(winners) == 1:
    return winners[0]
  assert L[nouns[0]].topic in winners, words  # first noun = subject of the first clause
  return L[nouns[0]].topic


def _conflict(words, relatedness):
  s = _sentiment_score(words)
  r = sum(bs.CONFLICT_WEIGHTS[w] for w in words)
  z = relatedness * s / bs.SIGMA_SENTIMENT + (1 - abs(relatedness)) * r / bs.SIGMA_LEXICAL
  assert z != 0
  return int(z > 0)


def _core(c):
  aux = None if c['aux'] in (None, 'did') else c['aux']
  return (c['subj']['words'], aux, c['lemma'], c['obj']['noun'])


def _mods(c):
  m = {('adj', a) for a in c['obj']['adjs']}
  if c['adv']:
    m.add(('adv', c['adv']))
  if c['pp']:
    m.add(('pp', c['pp']))
  return m


def _entailment(p, h):
  if _core(p) != _core(h):
    return 'neutral'
  mp, mh = _mods(p), _mods(h)
  if not p['neg'] and not h['neg']:
    return 'entailment' if mh.issubset(mp) else 'neutral'
  if p['neg'] and h['neg']:
    return 'entailment' if mp.issubset(mh) else 'neutral'
  positive, negative = (mh, mp) if p['neg'] else (mp, mh)
  return 'contradiction' if negative.issubset(positive) else 'neutral'


def _similarity(p, h):
  def slots(c):
    return (c['subj']['noun'], frozenset(c['subj']['adjs']), c['lemma'], c['neg'] is not None,
            c['obj']['noun'], frozenset(c['obj']['adjs']))
  agree = sum(a == b for a, b in zip(slots(p), slots(h)))
  return 5 * agree / 6


# --- API, validation, determinism ------------------------------------------------------------

def test_public_constants():
  assert bs.TASKS == bs.SINGLE_TASKS + bs.PAIR_TASKS
  assert bs.TASKS == ('pos', 'chunk', 'sentiment', 'topic', 'conflict', 'entailment', 'similarity')
  assert bs.ENTAILMENT_LABELS == ('entailment', 'neutral', 'contradiction')
  assert bs.SENTIMENT_LABELS == ('negative', 'positive')
  assert len(bs.CONFLICT_LABELS) == 2 and len(bs.TOPICS) == 4
  assert bs.CHUNK_TAGS[0] == 'O' and len(set(bs.CHUNK_TAGS)) == len(bs.CHUNK_TAGS)
  assert {e.pos for e in L.values()} == set(bs.POS_TAGS)
  assert 200 <= len(bs.VOCABULARY) <= 400 and list(bs.VOCABULARY) == sorted(L)
  assert sum(len(w) >= 13 for w in bs.VOCABULARY) >= 10  # rare long words for WordPiece to split
  assert all(w == w.lower() for w in bs.VOCABULARY)


def test_conflict_weights_are_fixed_lexical_signs():
  content = {'NOUN', 'ADJ', 'VERB', 'ADV'}
  for w, e in L.items():
    r = bs.CONFLICT_WEIGHTS[w]
    if e.pos in content and w not in NEGATORS:
      assert r in (-1, 1), w
      assert r == bs.CONFLICT_WEIGHTS[e.lemma], w  # 'saw' shares the weight of 'see'
    else:
      assert r == 0, w
  assert set(bs.CONFLICT_WEIGHTS) == set(L)
  # balanced within each polarity class, so r carries no sentiment by construction
  for pos in ('ADJ', 'VERB', 'ADV'):
    for pol in (-1, 0, 1):
      lemmas = {e.lemma for w, e in L.items() if e.pos == pos and e.polarity == pol
                and w not in NEGATORS}
      assert abs(sum(bs.CONFLICT_WEIGHTS[w] for w in lemmas)) <= 1, (pos, pol)
  # pinned: the weights are part of the dataset's definition and must not drift
  digest = hashlib.sha256(json.dumps(sorted(bs.CONFLICT_WEIGHTS.items())).encode()).hexdigest()
  assert digest == CONFLICT_WEIGHTS_SHA256


@pytest.mark.parametrize('kwargs, match', [
    (dict(task='ner'), "'ner'"),
    (dict(num_examples=-3), '-3'),
    (dict(num_examples=2.5), '2.5'),
    (dict(relatedness=1.5), '1.5'),
    (dict(relatedness=-1.01), '-1.01'),
    (dict(relatedness=float('nan')), 'nan'),
    (dict(seed='0'), "'0'"),
    (dict(version=3), 'version must be one of'),
    (dict(version=2.0), '2.0'),
    (dict(version=True), 'True'),
])
def test_bad_arguments(kwargs, match):
  args = dict(task='sentiment', num_examples=3, seed=0, relatedness=0.0) | kwargs
  with pytest.raises(ValueError, match=match):
    bs.generate_examples(**args)


@pytest.mark.parametrize('version', bs.SUITE_VERSIONS)
def test_deterministic_and_seed_dependent(version):
  for task in bs.TASKS:
    a = _gen(task, 40, seed=3, version=version)
    assert a == _gen(task, 40, seed=3, version=version)
    assert a[:15] == _gen(task, 15, seed=3, version=version)  # a prefix of a larger request
    other = _gen(task, 40, seed=4, version=version)
    assert sum(x['words_a'] == y['words_a'] for x, y in zip(a, other)) <= 2
  assert _gen('pos', 0) == []
  assert _gen('pos', 20)[0]['words_a'] != _gen('chunk', 20)[0]['words_a']


def test_golden_output():
  """Pins the generator's output: a change here is a new dataset version."""
  blob = json.dumps([_gen(t, 10, seed=1, relatedness=0.25) for t in bs.TASKS])
  assert hashlib.sha256(blob.encode()).hexdigest() == GOLDEN_SHA256


def test_golden_output_v2():
  blob = json.dumps([_gen(t, 10, seed=1, relatedness=0.25, version=2) for t in bs.TASKS])
  assert hashlib.sha256(blob.encode()).hexdigest() == GOLDEN_V2_SHA256


def test_v2_changes_single_sentences_only():
  for task in bs.PAIR_TASKS:
    assert _gen(task, 50, version=2) == _gen(task, 50)
  for task in bs.SINGLE_TASKS:  # its own random stream
    v1, v2 = _gen(task, 50), _gen(task, 50, version=2)
    assert sum(a['words_a'] == b['words_a'] for a, b in zip(v1, v2)) <= 2


def test_homographs_are_neutral_verb_lemmas():
  """So a noun use (polarity 0, topic None, the word's own conflict weight) reads like the verb."""
  for w in bs.HOMOGRAPHS:
    assert L[w] == bs.LexEntry('VERB', 0, None, w)
    assert w[0] not in 'aeiou'  # 'a watch': no 'an' to agree with


def test_suite_version_reaches_the_tfds_config_name():
  v1 = builtin_tfds.suite_config(24, 8, 0.5, 3)
  assert v1.name == 'n24-8_r0.5_s3' and v1.suite_version == 1  # prepared v1 data stays valid
  v2 = builtin_tfds.suite_config(24, 8, 0.5, 3, suite_version=2)
  assert v2.name == 'n24-8_r0.5_s3_v2' and v2.suite_version == 2


@pytest.mark.parametrize('value', [0, 3])
def test_config_rejects_an_unknown_suite_version(value):
  config = default.get_config()
  config.data.suite_version = value
  with pytest.raises(ConfigError, match=r'config.data.suite_version: must be one of \(1, 2\)'):
    validate(config)


@pytest.mark.parametrize('version', bs.SUITE_VERSIONS)
def test_relatedness_changes_only_the_conflict_label(version):
  base = _gen('conflict', 200, relatedness=0.0, version=version)
  for rel in (1.0, -1.0, 0.5, -0.3, 0.77):
    other = _gen('conflict', 200, relatedness=rel, version=version)
    for a, b in zip(base, other):
      assert {k: v for k, v in a.items() if k != 'conflict'} == \
          {k: v for k, v in b.items() if k != 'conflict'}


# --- structure ---------------------------------------------------------------------------------

def test_keys_types_and_lengths(singles, pairs):
  for e in singles + pairs:
    assert tuple(e) == bs.EXAMPLE_KEYS
    assert all(isinstance(w, str) and w in L for w in e['words_a'] + e['words_b'])
    assert isinstance(e['similarity'], float)
    for k in ('sentiment', 'topic', 'conflict', 'entailment'):
      assert type(e[k]) is int
  for e in singles:
    assert e['task'] in bs.SINGLE_TASKS and e['words_b'] == []
    assert len(e['pos']) == len(e['chunk']) == len(e['words_a'])
    assert all(type(x) is int for x in e['pos'] + e['chunk'])
    assert e['sentiment'] in (0, 1) and e['conflict'] in (0, 1) and 0 <= e['topic'] < 4
    assert e['entailment'] == -1 and e['similarity'] == -1.0
  for e in pairs:
    assert e['task'] in bs.PAIR_TASKS and e['words_b']
    assert e['pos'] == [] and e['chunk'] == []
    assert e['sentiment'] == e['topic'] == e['conflict'] == -1
    assert e['entailment'] in (0, 1, 2) and 0.0 <= e['similarity'] <= 5.0
    for words in (e['words_a'], e['words_b']):  # pairs are single clauses
      assert not any(_pos(w) == 'CCONJ' for w in words)


def test_grammar(singles, pairs):
  for e in singles:
    clauses = _split_clauses(e['words_a'])
    assert len(clauses) in (1, 2)
    for c in clauses:
      _parse_clause(c)  # asserts the grammar
    if len(clauses) == 2:
      i = next(i for i, w in enumerate(e['words_a']) if _pos(w) == 'CCONJ')
      assert (e['words_a'][i - 1] == ',') == (e['words_a'][i] == 'but')
  for e in pairs:
    for words in (e['words_a'], e['words_b']):
      _parse_clause(_split_clauses(words)[0])


# --- each label rule, re-derived ---------------------------------------------------------------

def test_pos(singles):
  for e in singles:
    assert [bs.POS_TAGS[i] for i in e['pos']] == _tags(e['words_a'])


@pytest.mark.parametrize('version', bs.SUITE_VERSIONS)
def test_which_spellings_are_ambiguous(version):
  """v1: one tag per spelling. v2: each homograph, and no other word, is written with both
  tags, hundreds of times each in 4,000 sentences, and the context tagger agrees throughout."""
  counts = collections.defaultdict(collections.Counter)
  for e in _gen('pos', 4000, seed=13, version=version):
    tags = [bs.POS_TAGS[i] for i in e['pos']]
    assert tags == _tags(e['words_a'])
    for w, t in zip(e['words_a'], tags):
      counts[w][t] += 1
  ambiguous = {w for w, c in counts.items() if len(c) > 1}
  if version == 1:
    assert not ambiguous
    return
  assert ambiguous == set(bs.HOMOGRAPHS)
  assert all(counts[w]['NOUN'] >= 150 and counts[w]['VERB'] >= 150 for w in bs.HOMOGRAPHS)
  written = sum(sum(counts[w].values()) for w in bs.HOMOGRAPHS)
  assert 0.03 < written / sum(sum(c.values()) for c in counts.values()) < 0.05


def test_chunk(singles):
  for e in singles:
    assert [bs.CHUNK_TAGS[i] for i in e['chunk']] == _chunks(e['words_a'])


def test_sentiment(singles):
  for e in singles:
    s = _sentiment_score(e['words_a'])
    assert s != 0
    assert bs.SENTIMENT_LABELS[e['sentiment']] == ('positive' if s > 0 else 'negative')


def test_negation_scope_matters(singles):
  """The label differs from the scope-blind polarity sum often enough to need the scope."""
  blind = [sum(L[w].polarity for w in e['words_a']) for e in singles]
  differs = sum((b > 0) != bool(e['sentiment']) for b, e in zip(blind, singles))
  assert differs >= 0.1 * len(singles)


def test_topic(singles):
  for e in singles:
    assert bs.TOPICS[e['topic']] == _topic(e['words_a'])


@pytest.mark.parametrize('version', bs.SUITE_VERSIONS)
@pytest.mark.parametrize('relatedness', [0.5, 1.0, 0.0, -1.0, -0.35])
def test_conflict(relatedness, version):
  for task in ('conflict', 'sentiment'):
    for e in _gen(task, 150, seed=11, relatedness=relatedness, version=version):
      assert e['conflict'] == _conflict(e['words_a'], relatedness)


def test_entailment(pairs):
  for e in pairs:
    p = _parse_clause(_split_clauses(e['words_a'])[0])
    h = _parse_clause(_split_clauses(e['words_b'])[0])
    assert bs.ENTAILMENT_LABELS[e['entailment']] == _entailment(p, h), e


def test_similarity(pairs):
  for e in pairs:
    p = _parse_clause(_split_clauses(e['words_a'])[0])
    h = _parse_clause(_split_clauses(e['words_b'])[0])
    assert math.isclose(e['similarity'], _similarity(p, h), abs_tol=1e-12)


# --- the relatedness knob ------------------------------------------------------------------------

def _agreement(relatedness, n=2000):
  ex = _gen('conflict', n, seed=5, relatedness=relatedness)
  return sum(e['conflict'] == e['sentiment'] for e in ex)


def test_relatedness_knob():
  n = 2000
  assert _agreement(1.0, n) == n
  assert _agreement(-1.0, n) == 0
  assert abs(_agreement(0.0, n) - n / 2) < 4 * math.sqrt(n / 4)  # 4-sigma binomial bound
  agree = [_agreement(r, n) for r in (-0.5, 0.0, 0.5)]
  assert agree[0] < agree[1] < agree[2]
  assert 0.6 * n < agree[2] < 0.95 * n


# --- label distributions ------------------------------------------------------------------------

def test_distributions_not_degenerate(singles):
  def frac(values):
    c = collections.Counter(values)
    return {k: v / len(values) for k, v in c.items()}

  assert set(frac([i for e in singles for i in e['pos']])) == set(range(len(bs.POS_TAGS)))
  assert set(frac([i for e in singles for i in e['chunk']])) == set(range(len(bs.CHUNK_TAGS)))
  assert min(frac([e['sentiment'] for e in singles]).values()) > 0.4
  topic = frac([e['topic'] for e in singles])
  assert len(topic) == 4 and min(topic.values()) > 0.15
  assert min(frac([e['conflict'] for e in singles]).values()) > 0.35
  ent = frac([e['entailment'] for e in _gen('entailment', 900, seed=2)])
  assert len(ent) == 3 and min(ent.values()) >= 0.2, ent
  sim = frac([round(e['similarity'] * 6 / 5) for e in _gen('similarity', 900, seed=2)])
  assert set(sim) == set(range(7)) and min(sim.values()) >= 0.08, sim
  # negation, two-clause sentences and PPs are all common
  words = [e['words_a'] for e in singles]
  assert 0.3 < sum(any(w in NEGATORS for w in ws) for ws in words) / len(words) < 0.8
  assert 0.3 < sum(any(_pos(w) == 'CCONJ' for w in ws) for ws in words) / len(words) < 0.7
  assert 0.3 < sum(any(_pos(w) == 'ADP' for w in ws) for ws in words) / len(words) < 0.9


CONFLICT_WEIGHTS_SHA256 = '789784e1c9026bda8936067bb5276f13714941189bad2c7d9b59989e515fe9f1'
GOLDEN_SHA256 = '851f6ac77c0c5a974ffb68903dc5ff824669eca49ed627a1fe404a060668dd13'
GOLDEN_V2_SHA256 = '83d8f71963400f390917e76b71b49cee82ce35d03cdc5474caeb8de46e086155'
