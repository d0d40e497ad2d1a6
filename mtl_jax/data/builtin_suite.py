"""The built-in offline suite: English-like sentences with exact, rule-defined labels for 7 tasks.

Everything here is pure Python and deterministic: `generate_examples(task, n, seed, relatedness,
version)` returns the same list for the same arguments on every machine and Python version
(randomness comes only from `random.Random.random()`, seeded from a SHA-256 digest, whose sequence
Python guarantees).

Versions (SUITE_VERSIONS): in version 1 every word has one POS tag. Version 2 also writes the
verbs of HOMOGRAPHS as generic inanimate nouns ('the watch' / 'will watch'), so their tag needs
context; its pair examples are version 1's.

A sentence is one clause, or two clauses joined by ", but" / "and", ending in ".":

  clause = subject-NP  VP  object-NP  [PP]
  NP     = DET ADJ{0,2} NOUN            (subject nouns are animate, others inanimate; an NP
                                         inside a PP has 1 determiner of {the, a}, <= 1 adjective)
  VP     = [AUX] [NEG] [ADV] VERB       (NEG is 'not' or 'never'; 'not' always follows an AUX)
  PP     = ADP NP

Labels (docs/builtin_suite.md states every rule exactly):
  pos         one of POS_TAGS per word: the word's entry in LEXICON, except that a homograph
              (version 2) is NOUN inside a noun phrase.
  chunk       CoNLL-2000 style BIO: NP, VP (aux+neg+adverb+verb), PP (the preposition alone), O.
  sentiment   sign of the polarity sum, with polarity flipped from a negator to the end of its
              clause.
  topic       the topic that supplies most nouns; ties go to the first clause's subject noun.
  conflict    sign of relatedness*s/SIGMA_SENTIMENT + (1-|relatedness|)*r/SIGMA_LEXICAL, with s the
              sentiment score and r a fixed random +-1 lexical score (CONFLICT_WEIGHTS).
  entailment  natural-logic rule over (core, negation, modifier sets) of two one-clause sentences.
  similarity  5 * (fraction of 6 slots on which the two sentences agree).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
import random
from typing import NamedTuple

SINGLE_TASKS = ('pos', 'chunk', 'sentiment', 'topic', 'conflict')
PAIR_TASKS = ('entailment', 'similarity')
TASKS = SINGLE_TASKS + PAIR_TASKS

POS_TAGS = ('DET', 'ADJ', 'NOUN', 'VERB', 'AUX', 'PART', 'ADV', 'ADP', 'CCONJ', 'PUNCT')
CHUNK_TAGS = ('O', 'B-NP', 'I-NP', 'B-VP', 'I-VP', 'B-PP')
TOPICS = ('sports', 'food', 'tech', 'nature')
SENTIMENT_LABELS = ('negative', 'positive')
CONFLICT_LABELS = ('a', 'b')
ENTAILMENT_LABELS = ('entailment', 'neutral', 'contradiction')

# The keys of every example, in this order.
EXAMPLE_KEYS = ('task', 'words_a', 'words_b', 'pos', 'chunk', 'sentiment', 'topic', 'conflict',
                'entailment', 'similarity')

NEGATORS = ('not', 'never')
# 'did' is do-support: for entailment it counts as no auxiliary ("did not see" = negated "saw").
DO_SUPPORT = 'did'

# Normalising constants of the conflict task: the standard deviations (rounded; measured 1.90 and
# 3.10 over 30k single-sentence examples) of the sentiment score s and of the lexical score r.
# |s| <= 14 < 19, so with the ratio 19/31 the mixed score is never 0 at relatedness +-0.5 either.
SIGMA_SENTIMENT = 1.9
SIGMA_LEXICAL = 3.1

# ----------------------------------------------------------------------------------------------
# Vocabulary. Every word has one lexicon entry; only the HOMOGRAPHS of version 2 have a second
# part of speech (NOUN), so in version 1 POS is a function of the word.
# ----------------------------------------------------------------------------------------------

_DETERMINERS = ('the', 'a', 'this', 'that', 'every', 'some')  # 'a' is written 'an' before a vowel
_PP_DETERMINERS = ('the', 'a')

_ADJECTIVES = {
    +1: ('good', 'great', 'brilliant', 'wonderful', 'lovely', 'excellent', 'delightful', 'superb',
         'cheerful', 'elegant', 'remarkable', 'magnificent', 'extraordinary', 'charming',
         'graceful', 'fantastic', 'impressive', 'marvelous', 'splendid', 'trustworthy'),
    -1: ('bad', 'awful', 'terrible', 'horrible', 'dreadful', 'boring', 'ugly', 'clumsy',
         'miserable', 'disappointing', 'mediocre', 'unpleasant', 'disastrous', 'gloomy', 'tedious',
         'incompetent', 'incomprehensible', 'pathetic', 'shabby', 'unreliable'),
    0: ('big', 'small', 'old', 'new', 'red', 'blue', 'green', 'tall', 'wooden', 'heavy', 'quiet',
        'distant', 'local', 'ordinary', 'rectangular', 'northern', 'ancient', 'yellow', 'round',
        'transparent'),
}

# topic -> (animate nouns: subjects; inanimate nouns: objects and PP objects). None is generic.
_NOUNS = {
    'sports': (('coach', 'athlete', 'referee', 'umpire', 'goalkeeper', 'quarterback', 'swimmer',
                'cyclist'),
               ('stadium', 'tournament', 'match', 'trophy', 'racket', 'helmet', 'marathon',
                'league', 'ball', 'championship', 'scoreboard', 'gymnasium', 'medal',
                'skateboard')),
    'food': (('chef', 'baker', 'waiter', 'sommelier', 'butcher', 'gourmet', 'pastrycook',
              'nutritionist'),
             ('soup', 'bread', 'cheese', 'pizza', 'sandwich', 'omelette', 'kitchen', 'restaurant',
              'recipe', 'oven', 'spaghetti', 'croissant', 'dessert', 'vinaigrette')),
    'tech': (('engineer', 'programmer', 'robot', 'hacker', 'technician', 'developer',
              'cryptographer', 'roboticist'),
             ('computer', 'laptop', 'algorithm', 'server', 'database', 'smartphone',
              'microprocessor', 'semiconductor', 'keyboard', 'software', 'laboratory',
              'satellite', 'spreadsheet', 'cryptocurrency')),
    'nature': (('hiker', 'farmer', 'eagle', 'wolf', 'squirrel', 'tortoise', 'butterfly',
                'botanist'),
               ('forest', 'river', 'mountain', 'ocean', 'island', 'flower', 'meadow', 'glacier',
                'volcano', 'waterfall', 'rainforest', 'canyon', 'valley', 'chrysanthemum')),
    None: (('person', 'friend', 'neighbor', 'stranger', 'student', 'teacher', 'visitor', 'child',
            'journalist', 'tourist'),
           ('thing', 'place', 'story', 'picture', 'gift', 'newspaper', 'afternoon', 'weekend')),
}

# (lemma, past tense, polarity). After an auxiliary the lemma (base form) is written, else the past.
_VERBS = (
    ('watch', 'watched', 0), ('see', 'saw', 0), ('find', 'found', 0), ('visit', 'visited', 0),
    ('describe', 'described', 0), ('mention', 'mentioned', 0), ('carry', 'carried', 0),
    ('notice', 'noticed', 0), ('remember', 'remembered', 0), ('consider', 'considered', 0),
    ('examine', 'examined', 0), ('discover', 'discovered', 0), ('build', 'built', 0),
    ('choose', 'chose', 0), ('bring', 'brought', 0), ('follow', 'followed', 0),
    ('love', 'loved', 1), ('enjoy', 'enjoyed', 1), ('admire', 'admired', 1),
    ('praise', 'praised', 1), ('appreciate', 'appreciated', 1), ('celebrate', 'celebrated', 1),
    ('adore', 'adored', 1), ('recommend', 'recommended', 1),
    ('hate', 'hated', -1), ('ruin', 'ruined', -1), ('criticize', 'criticized', -1),
    ('despise', 'despised', -1), ('ignore', 'ignored', -1), ('damage', 'damaged', -1),
    ('mock', 'mocked', -1), ('detest', 'detested', -1),
)

_ADVERBS = {
    +1: ('happily', 'gladly', 'eagerly', 'warmly', 'enthusiastically', 'wholeheartedly'),
    -1: ('sadly', 'reluctantly', 'angrily', 'grudgingly', 'bitterly', 'carelessly'),
    0: ('quickly', 'slowly', 'carefully', 'often', 'quietly', 'finally', 'recently',
        'occasionally', 'deliberately', 'reportedly'),
}

_AUXILIARIES = ('did', 'will', 'would', 'could', 'should', 'might', 'can', 'must')
_PREPOSITIONS = ('in', 'at', 'near', 'behind', 'beside')
_CONJUNCTIONS = ('and', 'but')
_PUNCTUATION = (',', '.')


class LexEntry(NamedTuple):
  """What the grammar knows about a word."""
  pos: str  # one of POS_TAGS
  polarity: int  # +1, -1 or 0: the word's contribution to the sentiment score
  topic: str | None  # one of TOPICS for topical nouns, else None
  lemma: str  # the verb's base form for verbs ('saw' -> 'see'), 'a' for 'an', else the word


def _build_lexicon() -> dict[str, LexEntry]:
  entries: list[tuple[str, LexEntry]] = []
  entries += [(w, LexEntry('DET', 0, None, w)) for w in _DETERMINERS]
  entries.append(('an', LexEntry('DET', 0, None, 'a')))
  for polarity, words in _ADJECTIVES.items():
    entries += [(w, LexEntry('ADJ', polarity, None, w)) for w in words]
  for topic, (animate, inanimate) in _NOUNS.items():
    entries += [(w, LexEntry('NOUN', 0, topic, w)) for w in animate + inanimate]
  for lemma, past, polarity in _VERBS:
    entries += [(lemma, LexEntry('VERB', polarity, None, lemma)),
                (past, LexEntry('VERB', polarity, None, lemma))]
  for polarity, words in _ADVERBS.items():
    entries += [(w, LexEntry('ADV', polarity, None, w)) for w in words]
  entries += [('not', LexEntry('PART', 0, None, 'not')),
              ('never', LexEntry('ADV', 0, None, 'never'))]
  entries += [(w, LexEntry('AUX', 0, None, w)) for w in _AUXILIARIES]
  entries += [(w, LexEntry('ADP', 0, None, w)) for w in _PREPOSITIONS]
  entries += [(w, LexEntry('CCONJ', 0, None, w)) for w in _CONJUNCTIONS]
  entries += [(w, LexEntry('PUNCT', 0, None, w)) for w in _PUNCTUATION]
  lexicon = dict(entries)
  if len(lexicon) != len(entries):
    seen: set[str] = set()
    dupes = sorted({w for w, _ in entries if w in seen or seen.add(w)})
    raise AssertionError(f'builtin_suite: words with two lexicon entries: {dupes}')
  return lexicon


# word -> LexEntry, for every word the generator can write.
LEXICON: dict[str, LexEntry] = _build_lexicon()
VOCABULARY: tuple[str, ...] = tuple(sorted(LEXICON))

# Version 2's noun/verb homographs: neutral verb lemmas that are also generic inanimate nouns
# ('a watch', 'the visit', 'a notice', 'a find', 'the mention'). As a noun each has polarity 0 and
# topic None, as its verb entry has, so the sentiment and topic rules read both uses alike.
HOMOGRAPHS = ('watch', 'visit', 'notice', 'find', 'mention')


class _Homographs(NamedTuple):
  """How often a suite version draws a homograph for each use."""
  p_verb: float  # a clause's verb (else drawn from all verbs, as in version 1)
  p_noun: float  # an object or PP noun (else drawn as in version 1)


# suite version -> its homograph rates (version 1: none, and no random number drawn for them).
_HOMOGRAPH_RATES = {1: _Homographs(0.0, 0.0), 2: _Homographs(0.2, 0.15)}
SUITE_VERSIONS = tuple(_HOMOGRAPH_RATES)
_V1 = _HOMOGRAPH_RATES[1]

# Words whose conflict weight is non-zero: nouns, adjectives, verbs and adverbs except 'never'.
_CONTENT_POS = ('NOUN', 'ADJ', 'VERB', 'ADV')
_CONFLICT_WEIGHT_SEED = 'mtl_jax.builtin_suite/conflict-weights/v1'


def _rng_from_key(key: str) -> random.Random:
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return random.Random(int.from_bytes(digest[:16], 'little'))


def _build_conflict_weights() -> dict[str, int]:
  """r_w in {-1, +1} per content lemma, 0 for function words; fixed, independent of any data seed.

  Lemmas are grouped by (POS, polarity, topic, animate noun?); within each group a fixed shuffle
  gives the first half +1 and the second half -1 (an odd group's middle lemma gets a fixed random
  sign). So r is uncorrelated with sentiment polarity, topic and noun position by construction,
  and its mean is close to 0.
  """
  rng = _rng_from_key(_CONFLICT_WEIGHT_SEED)
  animate = {w for ws, _ in _NOUNS.values() for w in ws}
  groups: dict[tuple, list[str]] = {}
  for word, e in sorted(LEXICON.items()):
    if e.pos in _CONTENT_POS and word not in NEGATORS and e.lemma == word:
      key = (e.pos, e.polarity, e.topic or '', word in animate)
      groups.setdefault(key, []).append(word)
  lemma_weight: dict[str, int] = {}
  for key in sorted(groups):
    lemmas = groups[key]
    _shuffle(rng, lemmas)
    half = len(lemmas) // 2
    for i, lemma in enumerate(lemmas):
      if len(lemmas) % 2 and i == half:
        lemma_weight[lemma] = 1 if rng.random() < 0.5 else -1
      else:
        lemma_weight[lemma] = 1 if i < half else -1
  return {w: lemma_weight.get(e.lemma, 0) if w not in NEGATORS else 0 for w, e in LEXICON.items()}


# ----------------------------------------------------------------------------------------------
# Random helpers that use only Random.random(), whose output sequence Python keeps stable.
# ----------------------------------------------------------------------------------------------

def _index(rng: random.Random, n: int) -> int:
  return int(rng.random() * n)  # < n: random() < 1 and the product rounds below n


def _choice(rng: random.Random, seq):
  return seq[int(rng.random() * len(seq))]


def _shuffle(rng: random.Random, items: list) -> None:
  for i in range(len(items) - 1, 0, -1):
    j = _index(rng, i + 1)
    items[i], items[j] = items[j], items[i]


def _weighted(rng: random.Random, weights: tuple[float, ...]) -> int:
  u = rng.random() * sum(weights)
  for i, w in enumerate(weights):
    u -= w
    if u < 0:
      return i
  return len(weights) - 1


CONFLICT_WEIGHTS: dict[str, int] = _build_conflict_weights()

_ALL_ADVERBS = tuple(w for ws in _ADVERBS.values() for w in ws)
_VERB_LEMMAS = tuple(lemma for lemma, _, _ in _VERBS)
_PAST = {lemma: past for lemma, past, _ in _VERBS}
_ANIMATE = {t: animate for t, (animate, _) in _NOUNS.items()}
_INANIMATE = {t: inanimate for t, (_, inanimate) in _NOUNS.items()}
_ALL_ANIMATE = tuple(w for ws in _ANIMATE.values() for w in ws)
_ALL_INANIMATE = tuple(w for ws in _INANIMATE.values() for w in ws)
_NON_DO_AUX = tuple(a for a in _AUXILIARIES if a != DO_SUPPORT)
_TAG_ID = {t: i for i, t in enumerate(POS_TAGS)}
_CHUNK_ID = {t: i for i, t in enumerate(CHUNK_TAGS)}
_MAX_ATTEMPTS = 10_000


# ----------------------------------------------------------------------------------------------
# Sentence structures and rendering.
# ----------------------------------------------------------------------------------------------

class _NP(NamedTuple):
  det: str  # 'a' stands for 'a'/'an'
  adjs: tuple[str, ...]
  noun: str


class _Clause(NamedTuple):
  subj: _NP
  aux: str | None
  neg: str | None  # 'not', 'never' or None
  adv: str | None
  verb: str  # lemma
  obj: _NP
  pp: tuple[str, _NP] | None  # (preposition, NP)


def _np_words(np_: _NP) -> list[str]:
  rest = list(np_.adjs) + [np_.noun]
  det = 'an' if np_.det == 'a' and rest[0][0] in 'aeiou' else np_.det
  return [det] + rest


def _render_clause(c: _Clause, words: list[str], pos: list[str], chunk: list[str]) -> None:
  def add_np(np_: _NP) -> None:
    ws = _np_words(np_)
    words.extend(ws)
    pos.extend(['DET'] + ['ADJ'] * len(np_.adjs) + ['NOUN'])
    chunk.extend(['B-NP'] + ['I-NP'] * (len(ws) - 1))

  add_np(c.subj)
  vp = []
  if c.aux:
    vp.append((c.aux, 'AUX'))
  if c.neg:
    vp.append((c.neg, 'PART' if c.neg == 'not' else 'ADV'))
  if c.adv:
    vp.append((c.adv, 'ADV'))
  vp.append((c.verb if c.aux else _PAST[c.verb], 'VERB'))
  for i, (w, t) in enumerate(vp):
    words.append(w)
    pos.append(t)
    chunk.append('I-VP' if i else 'B-VP')
  add_np(c.obj)
  if c.pp:
    words.append(c.pp[0])
    pos.append('ADP')
    chunk.append('B-PP')
    add_np(c.pp[1])


def _render(clauses: list[_Clause], conj: str | None) -> tuple[list[str], list[int], list[int]]:
  words: list[str] = []
  pos: list[str] = []
  chunk: list[str] = []
  _render_clause(clauses[0], words, pos, chunk)
  if len(clauses) == 2:
    if conj == 'but':
      words.append(',')
      pos.append('PUNCT')
      chunk.append('O')
    words.append(conj)
    pos.append('CCONJ')
    chunk.append('O')
    _render_clause(clauses[1], words, pos, chunk)
  words.append('.')
  pos.append('PUNCT')
  chunk.append('O')
  return words, [_TAG_ID[t] for t in pos], [_CHUNK_ID[t] for t in chunk]


# ----------------------------------------------------------------------------------------------
# Label rules on structures (the tests re-derive every one from the words instead).
# ----------------------------------------------------------------------------------------------

def _pol(word: str | None) -> int:
  return LEXICON[word].polarity if word else 0


def _clause_sentiment(c: _Clause) -> int:
  outside = sum(_pol(a) for a in c.subj.adjs)
  inside = _pol(c.adv) + LEXICON[c.verb].polarity + sum(_pol(a) for a in c.obj.adjs)
  if c.pp:
    inside += sum(_pol(a) for a in c.pp[1].adjs)
  return outside + (-inside if c.neg else inside)


def _nouns(c: _Clause) -> list[str]:
  return [c.subj.noun, c.obj.noun] + ([c.pp[1].noun] if c.pp else [])


def _topic_label(clauses: list[_Clause]) -> int | None:
  """The topic rule, or None when it gives no unique answer (such sentences are resampled)."""
  counts = dict.fromkeys(TOPICS, 0)
  for c in clauses:
    for noun in _nouns(c):
      t = LEXICON[noun].topic
      if t is not None:
        counts[t] += 1
  best = max(counts.values())
  if best == 0:
    return None
  winners = [t for t in TOPICS if counts[t] == best]
  if len(winners) == 1:
    return TOPICS.index(winners[0])
  tie_break = LEXICON[clauses[0].subj.noun].topic
  return TOPICS.index(tie_break) if tie_break in winners else None


def _conflict_score(s: int, r: int, relatedness: float) -> float:
  return relatedness * s / SIGMA_SENTIMENT + (1 - abs(relatedness)) * r / SIGMA_LEXICAL


def _aux_key(c: _Clause) -> str | None:
  return None if c.aux in (None, DO_SUPPORT) else c.aux


def _core(c: _Clause) -> tuple:
  return (tuple(_np_words(c.subj)), _aux_key(c), c.verb, c.obj.noun)


def _modifiers(c: _Clause) -> frozenset:
  m = {('adj', a) for a in c.obj.adjs}
  if c.adv:
    m.add(('adv', c.adv))
  if c.pp:
    m.add(('pp', c.pp[0], tuple(_np_words(c.pp[1]))))
  return frozenset(m)


def _entailment_label(p: _Clause, h: _Clause) -> int:
  if _core(p) != _core(h):
    return ENTAILMENT_LABELS.index('neutral')
  mp, mh = _modifiers(p), _modifiers(h)
  if not p.neg and not h.neg:
    label = 'entailment' if mh <= mp else 'neutral'
  elif p.neg and h.neg:
    label = 'entailment' if mp <= mh else 'neutral'
  else:
    m_pos, m_neg = (mh, mp) if p.neg else (mp, mh)
    label = 'contradiction' if m_neg <= m_pos else 'neutral'
  return ENTAILMENT_LABELS.index(label)


def _slots(c: _Clause) -> tuple:
  return (c.subj.noun, frozenset(c.subj.adjs), c.verb, c.neg is not None, c.obj.noun,
          frozenset(c.obj.adjs))


def _similarity(a: _Clause, b: _Clause) -> float:
  agree = sum(x == y for x, y in zip(_slots(a), _slots(b)))
  return 5.0 * agree / 6.0


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------

def _adjectives(rng: random.Random, k: int, exclude=()) -> tuple[str, ...]:
  """k distinct adjectives: polarity class uniform over {+1, -1, 0}, then the word uniform."""
  out: list[str] = []
  while len(out) < k:
    a = _choice(rng, _ADJECTIVES[_choice(rng, (1, -1, 0))])
    if a not in out and a not in exclude:
      out.append(a)
  return tuple(out)


def _homograph(rng: random.Random, p: float) -> str | None:
  """A homograph with probability p, else None; at p = 0 it draws nothing (version 1's stream)."""
  return _choice(rng, HOMOGRAPHS) if p and rng.random() < p else None


def _noun(rng: random.Random, topic: str, animate: bool, rates: _Homographs = _V1) -> str:
  homograph = None if animate else _homograph(rng, rates.p_noun)
  if homograph:
    return homograph
  u = rng.random()
  if u < 0.55:
    t = topic
  elif u < 0.75:
    t = None
  else:
    t = _choice(rng, tuple(x for x in TOPICS if x != topic))
  return _choice(rng, _ANIMATE[t] if animate else _INANIMATE[t])


def _np(rng: random.Random, topic: str, animate: bool, adj_weights=(0.45, 0.35, 0.2),
        rates: _Homographs = _V1) -> _NP:
  dets = _DETERMINERS if len(adj_weights) == 3 else _PP_DETERMINERS
  return _NP(_choice(rng, dets), _adjectives(rng, _weighted(rng, adj_weights)),
             _noun(rng, topic, animate, rates))


def _pp(rng: random.Random, topic: str, rates: _Homographs = _V1) -> tuple[str, _NP]:
  return (_choice(rng, _PREPOSITIONS), _np(rng, topic, False, (0.6, 0.4), rates))


def _negated_vp(rng: random.Random) -> tuple[str | None, str]:
  """(aux, negator): 'not' needs an auxiliary; 'never' takes none or a non-'did' one."""
  if rng.random() < 0.5:
    return _choice(rng, _AUXILIARIES), 'not'
  return (None if rng.random() < 0.5 else _choice(rng, _NON_DO_AUX)), 'never'


def _clause(rng: random.Random, topic: str, p_neg: float = 0.4, p_adv: float = 0.3,
            p_pp: float = 0.4, rates: _Homographs = _V1) -> _Clause:
  subj = _np(rng, topic, True)
  if rng.random() < p_neg:
    aux, neg = _negated_vp(rng)
  else:
    aux, neg = (None if rng.random() < 0.5 else _choice(rng, _AUXILIARIES)), None
  adv = _choice(rng, _ALL_ADVERBS) if rng.random() < p_adv else None
  verb = _homograph(rng, rates.p_verb) or _choice(rng, _VERB_LEMMAS)
  obj = _np(rng, topic, False, rates=rates)
  pp = _pp(rng, topic, rates) if rng.random() < p_pp else None
  return _Clause(subj, aux, neg, adv, verb, obj, pp)


def _single_example(task: str, rng: random.Random, relatedness: float,
                    rates: _Homographs) -> dict:
  for _ in range(_MAX_ATTEMPTS):
    topic = _choice(rng, TOPICS)
    clauses = [_clause(rng, topic, rates=rates)]
    conj = None
    if rng.random() < 0.5:
      conj = _choice(rng, _CONJUNCTIONS)
      clauses.append(_clause(rng, topic, rates=rates))
    s = sum(_clause_sentiment(c) for c in clauses)
    topic_id = _topic_label(clauses)
    if s == 0 or topic_id is None:
      continue
    words, pos, chunk = _render(clauses, conj)
    r = sum(CONFLICT_WEIGHTS[w] for w in words)
    if r == 0:
      continue
    z = _conflict_score(s, r, relatedness)
    if z == 0:  # only possible for a handful of contrived relatedness values
      continue
    return {'task': task, 'words_a': words, 'words_b': [], 'pos': pos, 'chunk': chunk,
            'sentiment': int(s > 0), 'topic': topic_id, 'conflict': int(z > 0),
            'entailment': -1, 'similarity': -1.0}
  raise RuntimeError('builtin_suite: could not sample a valid sentence.')  # never happens


# --- edits of a single clause, used to build hypotheses -----------------------------------------

def _negate(rng: random.Random, c: _Clause) -> _Clause:
  if c.neg:
    return c
  if c.aux in (None, DO_SUPPORT):
    aux, neg = (DO_SUPPORT, 'not') if rng.random() < 0.5 else (None, 'never')
  else:
    aux, neg = c.aux, _choice(rng, NEGATORS)
  return c._replace(aux=aux, neg=neg)


def _unnegate(rng: random.Random, c: _Clause) -> _Clause:
  if not c.neg:
    return c
  aux = c.aux
  if aux == DO_SUPPORT and rng.random() < 0.8:
    aux = None
  return c._replace(aux=aux, neg=None)


def _restyle_negation(rng: random.Random, c: _Clause) -> _Clause:
  """Same aux key and polarity, possibly other surface form ('never saw' <-> 'did not see')."""
  if c.neg and c.aux in (None, DO_SUPPORT) and rng.random() < 0.3:
    return c._replace(aux=None, neg='never') if c.aux else c._replace(aux=DO_SUPPORT, neg='not')
  return c


def _drop_modifiers(rng: random.Random, c: _Clause, at_least_one: bool) -> _Clause | None:
  """c without a random subset of its modifiers; at_least_one: drop >= 1 (None if c has none)."""
  items = [('adj', a) for a in c.obj.adjs] + ([('adv',)] if c.adv else []) + \
      ([('pp',)] if c.pp else [])
  if not items:
    return None if at_least_one else c
  drop = [rng.random() < 0.5 for _ in items]
  if at_least_one and not any(drop):
    drop[_index(rng, len(items))] = True
  dropped = {it for it, d in zip(items, drop) if d}
  return c._replace(
      obj=c.obj._replace(adjs=tuple(a for a in c.obj.adjs if ('adj', a) not in dropped)),
      adv=None if ('adv',) in dropped else c.adv,
      pp=None if ('pp',) in dropped else c.pp)


def _add_modifier(rng: random.Random, c: _Clause, topic: str, avoid: frozenset = frozenset(),
                  replace_if_full: bool = False) -> _Clause:
  """c with one more modifier (object adjective, adverb or PP) that is not in `avoid`.

  If c already has 2 object adjectives, an adverb and a PP, it is returned unchanged, or, with
  replace_if_full, with one modifier replaced by one not in `avoid`.
  """
  avoid = avoid | _modifiers(c)
  options = []
  if len(c.obj.adjs) < 2:
    options.append('adj')
  if not c.adv:
    options.append('adv')
  if not c.pp:
    options.append('pp')
  full = not options
  if full:
    if not replace_if_full:
      return c
    options = ['adj', 'adv', 'pp']
  kind = _choice(rng, options)
  if kind == 'adj':
    while True:
      new = _adjectives(rng, 1)
      if ('adj', new[0]) not in avoid:
        break
    if full:
      return c._replace(obj=c.obj._replace(adjs=c.obj.adjs[:-1] + new))
    adjs = new + c.obj.adjs if rng.random() < 0.5 else c.obj.adjs + new
    return c._replace(obj=c.obj._replace(adjs=adjs))
  if kind == 'adv':
    while True:
      adv = _choice(rng, _ALL_ADVERBS)
      if ('adv', adv) not in avoid:
        return c._replace(adv=adv)
  while True:
    pp = _pp(rng, topic)
    if ('pp', pp[0], tuple(_np_words(pp[1]))) not in avoid:
      return c._replace(pp=pp)


def _other(rng: random.Random, pool: tuple, current):
  while True:
    x = _choice(rng, pool)
    if x != current:
      return x


def _other_adj_set(rng: random.Random, adjs: tuple[str, ...]) -> tuple[str, ...]:
  while True:
    new = _adjectives(rng, _weighted(rng, (0.3, 0.45, 0.25)))
    if frozenset(new) != frozenset(adjs):
      return new


def _change_core(rng: random.Random, c: _Clause, topic: str) -> _Clause:
  kind = _choice(rng, ('subj_noun', 'subj_adjs', 'subj_det', 'verb', 'obj_noun', 'aux'))
  if kind == 'subj_noun':
    return c._replace(subj=c.subj._replace(noun=_other(rng, _ALL_ANIMATE, c.subj.noun)))
  if kind == 'subj_adjs':
    return c._replace(subj=c.subj._replace(adjs=_other_adj_set(rng, c.subj.adjs)))
  if kind == 'subj_det':
    while True:
      subj = c.subj._replace(det=_other(rng, _DETERMINERS, c.subj.det))
      if _np_words(subj) != _np_words(c.subj):
        return c._replace(subj=subj)
  if kind == 'verb':
    return c._replace(verb=_other(rng, _VERB_LEMMAS, c.verb))
  if kind == 'obj_noun':
    return c._replace(obj=c.obj._replace(noun=_other(rng, _ALL_INANIMATE, c.obj.noun)))
  # a different auxiliary key; keeps the clause grammatical ('not' needs an auxiliary)
  key = _aux_key(c)
  choices = tuple(a for a in _NON_DO_AUX if a != key) + ((None,) if key is not None else ())
  aux = _choice(rng, choices)
  if aux is None and c.neg == 'not':
    aux = DO_SUPPORT
  return c._replace(aux=aux)


def _pair_clause(rng: random.Random, topic: str) -> _Clause:
  return _clause(rng, topic, p_neg=0.5, p_adv=0.4, p_pp=0.5)


def _entailment_pair(rng: random.Random, p: _Clause, topic: str) -> tuple[_Clause, _Clause]:
  """(premise, hypothesis) aimed at a uniformly drawn label.

  The label is always computed afterwards by the rule (_entailment_label); these edits only shape
  the distribution: about a third each, entailed pairs rarely identical, and half of the neutral
  pairs share the core, so the modifier rule, not just core matching, has to be learnt.
  """
  target = _choice(rng, ENTAILMENT_LABELS)
  if target == 'entailment':
    if rng.random() < 0.05:
      return p, p
    if p.neg:  # downward monotone: the hypothesis has the premise's modifiers and more
      h = _add_modifier(rng, p, topic)
      if h == p:  # no free modifier slot: take one away from the premise instead
        return _drop_modifiers(rng, p, at_least_one=True), _restyle_negation(rng, p)
      if rng.random() < 0.3:
        h = _add_modifier(rng, h, topic)
      return p, _restyle_negation(rng, h)
    if not _modifiers(p):  # upward monotone: the premise needs a modifier to drop
      p = _add_modifier(rng, p, topic)
    return p, _drop_modifiers(rng, p, at_least_one=True)
  if target == 'contradiction':
    if p.neg:  # the positive hypothesis has every modifier of the negated premise
      h = _unnegate(rng, p)
      for _ in range(_weighted(rng, (0.5, 0.35, 0.15))):
        h = _add_modifier(rng, h, topic)
      return p, h
    return p, _negate(rng, _drop_modifiers(rng, p, at_least_one=False))
  # neutral: half by a different core, half by a modifier that breaks the monotonicity rule
  if rng.random() < 0.5:
    h = _change_core(rng, p, topic)
    return p, (_drop_modifiers(rng, h, False) if rng.random() < 0.5 else h)
  same_polarity = rng.random() < 0.5
  if same_polarity and not p.neg:  # the hypothesis has a modifier the premise lacks
    h = _drop_modifiers(rng, p, at_least_one=False)
    return p, _add_modifier(rng, h, topic, avoid=_modifiers(p), replace_if_full=True)
  if same_polarity:  # both negated; the hypothesis lacks a modifier of the premise
    h = _drop_modifiers(rng, p, at_least_one=True)
    return p, (_restyle_negation(rng, h) if h is not None else _change_core(rng, p, topic))
  if not p.neg:  # negated hypothesis with a modifier the positive premise lacks
    return p, _negate(rng, _add_modifier(rng, p, topic, replace_if_full=True))
  h = _drop_modifiers(rng, p, at_least_one=True)  # positive hypothesis lacking a modifier
  return p, (_unnegate(rng, h) if h is not None else _change_core(rng, p, topic))


def _similarity_hypothesis(rng: random.Random, p: _Clause, topic: str) -> _Clause:
  """Changes k slots, k uniform in 0..6, plus slot-free noise (determiners, adjective order,
  adverb, PP)."""
  slots = list(range(6))
  _shuffle(rng, slots)
  h = p
  for slot in slots[:_index(rng, 7)]:
    if slot == 0:
      h = h._replace(subj=h.subj._replace(noun=_other(rng, _ALL_ANIMATE, h.subj.noun)))
    elif slot == 1:
      h = h._replace(subj=h.subj._replace(adjs=_other_adj_set(rng, h.subj.adjs)))
    elif slot == 2:
      h = h._replace(verb=_other(rng, _VERB_LEMMAS, h.verb))
    elif slot == 3:
      h = _unnegate(rng, h) if h.neg else _negate(rng, h)
    elif slot == 4:
      h = h._replace(obj=h.obj._replace(noun=_other(rng, _ALL_INANIMATE, h.obj.noun)))
    else:
      h = h._replace(obj=h.obj._replace(adjs=_other_adj_set(rng, h.obj.adjs)))
  if rng.random() < 0.3:
    h = h._replace(subj=h.subj._replace(det=_choice(rng, _DETERMINERS)),
                   obj=h.obj._replace(det=_choice(rng, _DETERMINERS)))
  if rng.random() < 0.2:  # adjective order is irrelevant to the slots (they compare sets)
    h = h._replace(subj=h.subj._replace(adjs=h.subj.adjs[::-1]),
                   obj=h.obj._replace(adjs=h.obj.adjs[::-1]))
  if rng.random() < 0.3:
    h = h._replace(adv=_choice(rng, _ALL_ADVERBS) if rng.random() < 0.4 else None)
  if rng.random() < 0.3:
    h = h._replace(pp=_pp(rng, topic) if rng.random() < 0.5 else None)
  return h


def _pair_example(task: str, rng: random.Random) -> dict:
  topic = _choice(rng, TOPICS)
  p = _pair_clause(rng, topic)
  if task == 'entailment':
    p, h = _entailment_pair(rng, p, topic)
  else:
    h = _similarity_hypothesis(rng, p, topic)
  return {'task': task, 'words_a': _render([p], None)[0], 'words_b': _render([h], None)[0],
          'pos': [], 'chunk': [], 'sentiment': -1, 'topic': -1, 'conflict': -1,
          'entailment': _entailment_label(p, h), 'similarity': _similarity(p, h)}


# ----------------------------------------------------------------------------------------------
# Public entry point.
# ----------------------------------------------------------------------------------------------

def generate_examples(task: str, num_examples: int, seed: int, relatedness: float,
                      version: int = 1) -> list[dict]:
  """`num_examples` examples whose home task is `task`; see the module and docs/builtin_suite.md.

  Deterministic given (task, num_examples, seed, relatedness, version); different seeds give
  different data. Example i depends only on (task, seed, version, i) and, through the conflict
  label, on relatedness: the words and all other labels are the same for every relatedness (a
  sentence is resampled for one relatedness and not another only if its mixed conflict score is
  exactly 0, which the constants make impossible for relatedness in {-1, -0.5, 0, 0.5, 1} and
  practically any other value), and the first n examples of a larger request equal a request
  for n.

  Args:
    task: one of TASKS.
    num_examples: how many examples, >= 0.
    seed: any integer (callers derive it from the suite seed and the split).
    relatedness: in [-1, 1]; how much the conflict task shares with sentiment (1: identical,
      0: an unrelated lexical partition, -1: the opposite of sentiment).
    version: one of SUITE_VERSIONS; 2 adds the noun uses of HOMOGRAPHS to single sentences.
  """
  if task not in TASKS:
    raise ValueError(f'Unknown built-in task {task!r}; expected one of {TASKS}.')
  if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral):
    raise ValueError(f'num_examples must be an integer, got {num_examples!r}.')
  if num_examples < 0:
    raise ValueError(f'num_examples must be >= 0, got {num_examples}.')
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise ValueError(f'seed must be an integer, got {seed!r}.')
  if (isinstance(relatedness, bool) or not isinstance(relatedness, numbers.Real)
      or not math.isfinite(relatedness) or not -1.0 <= relatedness <= 1.0):
    raise ValueError(f'relatedness must be a number in [-1, 1], got {relatedness!r}.')
  if (isinstance(version, bool) or not isinstance(version, numbers.Integral)
      or version not in SUITE_VERSIONS):
    raise ValueError(f'version must be one of {SUITE_VERSIONS}, got {version!r}.')
  relatedness = float(relatedness)
  seed = operator.index(seed)
  # Single sentences of each version have their own random streams; pair examples are v1's.
  stream = operator.index(version) if task in SINGLE_TASKS else 1
  examples = []
  for i in range(operator.index(num_examples)):
    rng = _rng_from_key(f'mtl_jax.builtin_suite/v{stream}|{task}|{seed}|{i}')
    if task in SINGLE_TASKS:
      examples.append(_single_example(task, rng, relatedness, _HOMOGRAPH_RATES[version]))
    else:
      examples.append(_pair_example(task, rng))
  return examples
