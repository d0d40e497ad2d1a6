"""Our weighting methods against LibMTL's numbers (tests/data/libmtl_reference.json).

The JSON was made once, offline, by experiments/reference/libmtl_reference.py (torch + LibMTL;
docs/libmtl_reference.md says how and lists LibMTL's conventions). Each record is a gradient
matrix G (N, P) and losses, LibMTL's update direction (θ.grad, i.e. what LibMTL hands its
optimizer) and weights; this file runs our method on the same G and losses through
tests/weighting_harness.py and compares directions. No torch is needed here.

MAPPING from LibMTL's names and hyperparameters to ours lives in OURS below (one line per
method). Every mapped hyperparameter must be an argument of our factory, and a LibMTL
hyperparameter we do not implement must have the one value we do: a renamed or removed
argument, or a missing method, fails the record (never a skip).

  LibMTL       hyperparameters (LibMTL default)                ours
  EW           -                                                equal()
  GLS          -                                                gls()
  UW           - (loss_scale s init -0.5; λ = 1/(2e^s))         uncertainty(init_log_variance=-0.5)
  DWA          T (2.0)                                          dwa(temperature=T, window=1)
  GradNorm     alpha (1.5)                                      gradnorm(alpha=alpha)
  MGDA         mgda_gn ('none'|'l2'|'loss'|'loss+')             mgda(normalization=mgda_gn)
  CAGrad       calpha (0.5), rescale (1)                        cagrad(c=calpha, rescale=rescale)
  IMTL         lr (1e-4), weight_decay (1e-5): the Trainer's    imtl(learning_rate=lr,
               Adam, which trains loss_scale s                  weight_decay=weight_decay)
  Nash_MTL     update_weights_every (1), optim_niter (20),      nash_mtl(max_norm=,
               max_norm (1.0)                                   update_weights_every=)
  Aligned_MTL  -                                                aligned_mtl()
  DB_MTL       DB_beta (0.9), DB_beta_sigma (0.0)               db_mtl(beta=, beta_sigma=)
  FAMO         FAMO_w_lr (0.025), FAMO_w_gamma (1e-3)           famo(learning_rate=, weight_decay=)
  PCGrad       -                                                pcgrad()
  GradVac      GradVac_beta (0.5), GradVac_group_type (0)       gradvac(beta=)
  GradDrop     leak (0.0)                                       graddrop(leak=)
  RLW          - (λ = softmax(z), z ~ N(0, I))                  rlw()

Comparison kinds (record['compare']): 'direction' (every step with check=True, in sequence,
state carried: |ours - ref| <= atol + rtol·max|ref|; for methods in STATE_COMPARED also the
learned parameter after every step, e.g. IMTL's loss scale s), 'direction_set'
(PCGrad/GradVac with N > 2: LibMTL's result depends on its random task orders; ours must
equal one of LibMTL's results over EVERY order combination, for a few keys),
'per_coordinate_choice' (GradDrop: each coordinate is LibMTL's keep-positive or
keep-negative value), 'weight_moments' (RLW: mean and std of λ over many keys), 'skip'
(LibMTL itself gives NaN/inf there).
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from mtl_jax import weighting
from weighting_harness import run, step_info

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'libmtl_reference.json')

with open(DATA) as _f:
  REFERENCE = json.load(_f)


def _arg(accepted, ours, value):
  """{ours: value}; TypeError when our factory has no argument `ours`."""
  if ours not in accepted:
    raise TypeError(f'our factory has no argument {ours!r} (its arguments: '
                    f'{sorted(accepted)}); fix OURS in this file.')
  return {ours: value}


def _only(hparams, name, value):
  """{} when LibMTL's `name` has the one value our method implements; ValueError if not."""
  if hparams[name] != value:
    raise ValueError(f'LibMTL {name}={hparams[name]!r}: ours implements only {value!r}.')
  return {}


# LibMTL name -> (our method, (hparams, accepted kwargs) -> (our kwargs, field to compare)).
OURS = {
    'EW': ('equal', lambda h, a: ({}, 'direction')),
    'GLS': ('gls', lambda h, a: ({}, 'direction')),
    # LibMTL starts log σ² at -0.5 (ours at 0 by default); its epochs are our windows of 1.
    'UW': ('uncertainty', lambda h, a: (_arg(a, 'init_log_variance', -0.5), 'direction')),
    'DWA': ('dwa', lambda h, a: ({**_arg(a, 'temperature', h['T']), **_arg(a, 'window', 1)},
                                 'direction')),
    'GradNorm': ('gradnorm', lambda h, a: (_arg(a, 'alpha', h['alpha']), 'direction')),
    'MGDA': ('mgda', lambda h, a: (_arg(a, 'normalization', h['mgda_gn']), 'direction')),
    'CAGrad': ('cagrad', lambda h, a: ({**_arg(a, 'c', h['calpha']),
                                        **_arg(a, 'rescale', h['rescale'])}, 'direction')),
    # LibMTL's model optimizer (Adam) trains IMTL's loss_scale; ours has its own Adam.
    'IMTL': ('imtl', lambda h, a: ({**_arg(a, 'learning_rate', h['lr']),
                                    **_arg(a, 'weight_decay', h['weight_decay'])},
                                   'direction')),
    # LibMTL's optim_niter counts its solver's iterations; ours runs to max_iter.
    'Nash_MTL': ('nash_mtl', lambda h, a: (
        {**_arg(a, 'max_norm', h['max_norm']),
         **_arg(a, 'update_weights_every', h['update_weights_every'])}, 'direction')),
    'Aligned_MTL': ('aligned_mtl', lambda h, a: ({}, 'direction')),
    'DB_MTL': ('db_mtl', lambda h, a: ({**_arg(a, 'beta', h['DB_beta']),
                                        **_arg(a, 'beta_sigma', h['DB_beta_sigma'])},
                                       'direction')),
    'FAMO': ('famo', lambda h, a: ({**_arg(a, 'learning_rate', h['FAMO_w_lr']),
                                    **_arg(a, 'weight_decay', h['FAMO_w_gamma'])},
                                   'direction')),
    'PCGrad': ('pcgrad', lambda h, a: ({}, 'direction')),
    # group_type 0: one group, the whole shared parameters (the only one ours has).
    'GradVac': ('gradvac', lambda h, a: ({**_arg(a, 'beta', h['GradVac_beta']),
                                          **_only(h, 'GradVac_group_type', 0)}, 'direction')),
    'GradDrop': ('graddrop', lambda h, a: (_arg(a, 'leak', h['leak']), 'direction')),
    'RLW': ('rlw', lambda h, a: ({}, 'direction')),
}


# Our CAGrad keeps the official code's scale (N·d/(1+c²), "to match the sum loss"); LibMTL's
# is 1/N of that. Compared after this factor.
DIRECTION_SCALE = {'CAGrad': lambda num_tasks: 1.0 / num_tasks}

# Learned parameters LibMTL records after each step: (record field, ours from our state).
STATE_COMPARED = {'IMTL': ('loss_scale_after', lambda state: state.log_scale)}


def _method(record):
  """(our Method, the record field to compare)."""
  ours, kwargs_of = OURS[record['libmtl']]
  assert ours in weighting.names(), f'no weighting method {ours!r} (mtl_jax/weighting/)'
  kwargs, field = kwargs_of(record['hparams'], weighting.default_args(ours))
  return weighting.get(ours, **kwargs), field


def _close(ours, ref, record):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return np.all(np.abs(ours - ref) <= record['atol'] + record['rtol'] * np.abs(ref).max())


def _message(record, t, step, ours, ref, out):
  return (f'{record["id"]} step {t}: ours {np.round(np.asarray(ours), 6).tolist()} vs LibMTL '
          f'{np.round(np.asarray(ref), 6).tolist()} (atol {record["atol"]:.1e}, rtol '
          f'{record["rtol"]:.0e}); our raw output {np.round(np.asarray(out), 6).tolist()}, '
          f'LibMTL weights {step.get("weights")}, coefficients on g_i '
          f'{step.get("coefficients")}. LibMTL: {record["note"]}')


def _records(kind):
  """Records of one comparison kind; 'direction' ones need at least one checked step or a
  learned parameter to compare (a record whose every direction LibMTL got ill-posed, e.g.
  IMTL on scaled gradients, is otherwise information only)."""
  return [pytest.param(r, id=f'{OURS[r["libmtl"]][0]}:{r["id"]}')
          for r in REFERENCE['records'] if r['compare'] == kind and
          (kind != 'direction' or any(s['check'] for s in r['steps']) or
           r['libmtl'] in STATE_COMPARED)]


@pytest.mark.parametrize('record', _records('direction'))
def test_direction_matches_libmtl(record):
  method, field = _method(record)
  state = None
  checked = 0
  for t, step in enumerate(record['steps']):
    direction, out, state = run(method, step['G'], step['losses'], state, key=t, step=t)
    direction = direction * DIRECTION_SCALE.get(record['libmtl'], lambda n: 1.0)(len(out))
    if record['libmtl'] in STATE_COMPARED:  # depends on the losses only: every step
      name, ours = STATE_COMPARED[record['libmtl']]
      np.testing.assert_allclose(ours(state), step[name], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{record["id"]} step {t}: {name}')
      checked += 1
    ref = step.get(field)
    if not step['check'] or ref is None:
      continue
    assert np.all(np.isfinite(direction)), record['id']
    assert _close(direction, ref, record), _message(record, t, step, direction, ref, out)
    checked += 1
  assert checked, f'{record["id"]}: nothing to compare'


@pytest.mark.parametrize('record', _records('direction_set'))
def test_direction_is_one_of_libmtls_orders(record):
  method, _ = _method(record)
  (step,) = record['steps']
  candidates = np.asarray(step['candidates'])
  assert record['all_orders'], 'an incomplete candidate set could not fail honestly'
  for key in range(3):
    direction, out, _ = run(method, step['G'], step['losses'], key=key)
    distances = [np.abs(np.asarray(direction) - c).max() for c in candidates]
    k = int(np.argmin(distances))
    assert _close(direction, candidates[k], record), (
        f'{record["id"]} key {key}: ours {np.round(np.asarray(direction), 6).tolist()} is none '
        f'of LibMTL\'s {len(candidates)} results over all task orders; nearest '
        f'{np.round(candidates[k], 6).tolist()} (orders {step["candidate_orders"][k]}). '
        f'LibMTL: {record["note"]}')


@pytest.mark.parametrize('record', _records('per_coordinate_choice'))
def test_graddrop_coordinates_are_libmtls_choices(record):
  method, _ = _method(record)
  (step,) = record['steps']
  pos, neg = np.asarray(step['keep_positive']), np.asarray(step['keep_negative'])
  tol = record['atol'] + record['rtol'] * max(np.abs(pos).max(), np.abs(neg).max())
  for key in range(4):
    direction, _, _ = run(method, step['G'], step['losses'], key=key)
    d = np.asarray(direction, np.float64)
    ok = (np.abs(d - pos) <= tol) | (np.abs(d - neg) <= tol)
    assert ok.all(), (f'{record["id"]} key {key}: coordinates {np.flatnonzero(~ok).tolist()} '
                      f'of {d.tolist()} are neither LibMTL\'s keep-positive {pos.tolist()} nor '
                      f'keep-negative {neg.tolist()}. LibMTL: {record["note"]}')


@pytest.mark.parametrize('record', _records('weight_moments'))
def test_rlw_weight_distribution_matches_libmtl(record):
  method, _ = _method(record)
  n = len(record['mean'])
  info = step_info(method, np.eye(n, 4), np.ones(n))
  state = method.init(n)
  keys = jax.random.split(jax.random.key(0), 4000)
  update = jax.jit(jax.vmap(lambda k: method.update(info._replace(key=k), state)[0]))
  lam = np.asarray(update(keys), np.float64)
  # 4000 draws: the standard error of a mean is <= std/63; 5 standard errors + slack.
  np.testing.assert_allclose(lam.mean(0), record['mean'], atol=0.02, err_msg=record['note'])
  np.testing.assert_allclose(lam.std(0), record['std'], rtol=0.1, err_msg=record['note'])
  np.testing.assert_allclose(lam.sum(1), 1.0, atol=1e-5, err_msg='LibMTL: λ sums to 1')
  assert (lam > 0).all()


@functools.cache
def _all_ids():
  return [r['id'] for r in REFERENCE['records']]


def test_reference_file_is_complete():
  """The stored references cover every method this file maps, with unique ids."""
  ids = _all_ids()
  assert len(ids) == len(set(ids))
  assert {r['libmtl'] for r in REFERENCE['records']} == set(OURS)
  assert all(OURS[r['libmtl']][0] in r['method'] for r in REFERENCE['records'])
