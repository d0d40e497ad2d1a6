"""PCGrad, GradVac, GradDrop and Aligned-MTL on small hand-made gradient matrices.

Truths: cases worked out by hand, properties from the papers, and straightforward numpy
re-implementations that work on the explicit gradient vectors (not on the Gram).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import weighting
from mtl_jax.weighting import Needs, aligned_mtl, gradvac, pcgrad
from mtl_jax.weighting.gradvac import GradVacState
from weighting_harness import run, step_info

S3 = np.sqrt(3.0)


def _conflicting(n, p, seed):
  """Random gradients with several conflicting pairs."""
  g = np.random.default_rng(seed).normal(size=(n, p))
  g[1] = -0.8 * g[0] + 0.3 * g[1]
  return g


# The modules' helpers, jitted once here (op-by-op fori_loops are slow).
surgery_coefficients = jax.jit(pcgrad.surgery_coefficients)
task_orders = jax.jit(pcgrad.task_orders, static_argnums=1)
vaccine = jax.jit(gradvac.vaccine, static_argnums=4)
alignment_matrix = jax.jit(aligned_mtl.alignment_matrix)


@functools.cache
def _get(name, **kwargs):
  return weighting.get(name, **kwargs)


@functools.cache
def _jitted_run(method):
  """The harness's run for `method`, all of it in one jit: one compile per gradient shape
  (op-by-op dispatch and compiles would dominate this file's time). Every case below thus
  also checks that the method is jit-able; the *_jit tests compare with eager updates."""
  return jax.jit(lambda grads, losses, state, present, key: run(
      method, grads, losses, state=state, present=present, key=key))


_WIDTH = 8


def _run(method, grads, losses, state=None, present=None, key=0):
  """(direction, raw output) as numpy arrays, and the new state, for a GRAM method."""
  # Always an array and a state, so that these never add a compile of their own.
  n = len(losses)
  present = np.ones(n, bool) if present is None else np.asarray(present, bool)
  state = method.init(n) if state is None else state
  # Zero coordinates change neither the Gram nor the coefficients: padding every case to
  # _WIDTH coordinates gives one compile per method and N.
  grads = np.asarray(grads, np.float32)
  width = grads.shape[1]
  padded = np.pad(grads, ((0, 0), (0, _WIDTH - width)))
  direction, out, state = _jitted_run(method)(padded, np.asarray(losses, np.float32), state,
                                              present, key)
  assert not np.asarray(direction)[width:].any()
  return np.asarray(direction)[:width], np.asarray(out), state


def _all_close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             atol=atol, rtol=rtol)


def test_registry_builds_every_method_with_defaults():
  for name, needs in (('pcgrad', Needs.GRAM), ('gradvac', Needs.GRAM),
                      ('graddrop', Needs.GRADS), ('aligned_mtl', Needs.GRAM)):
    assert name in weighting.names()
    assert weighting.get(name).needs is needs


# ----------------------------------------------------------------------------------- PCGrad

def _numpy_pcgrad(g, orders, present=None):
  """Algorithm 1 of the paper on explicit vectors, visiting j in orders[i] (j ≠ i)."""
  g = np.asarray(g, np.float64)
  present = np.ones(len(g), bool) if present is None else np.asarray(present)
  projected = []
  for i in range(len(g)):
    v = g[i].copy()
    for j in orders[i]:
      if j == i or not present[j] or not g[j].any():
        continue
      if v @ g[j] < 0:
        v = v - (v @ g[j]) / (g[j] @ g[j]) * g[j]
    projected.append(v)
  return np.array(projected)


def test_pcgrad_two_opposite_gradients_by_hand():
  # g1 = (1, 1), g2 = (-1, 0): g1·g2 = -1.
  # g1^PC = g1 + g2 = (0, 1); g2^PC = g2 + g1/2 = (-1/2, 1/2); sum (-1/2, 3/2) = 3/2 g1 + 2 g2.
  direction, c, _ = _run(_get('pcgrad'), [[1, 1], [-1, 0]], [1, 1])
  _all_close(c, [1.5, 2.0])
  _all_close(direction, [-0.5, 1.5])
  # Exactly opposite gradients cancel completely: both projections are 0.
  direction, _, _ = _run(_get('pcgrad'), [[1, 0], [-2, 0]], [1, 1])
  _all_close(direction, [0, 0], atol=1e-6)


def test_pcgrad_orthogonal_and_aligned_gradients_are_unchanged():
  for g in ([[1, 0, 0], [0, 2, 0], [0, 0, 3]], [[1, 2, 0], [2, 1, 1], [0, 1, 1]]):
    direction, c, _ = _run(_get('pcgrad'), g, [1, 1, 1], key=3)
    _all_close(c, [1, 1, 1])
    _all_close(direction, np.sum(g, 0))


def test_pcgrad_removes_the_conflict_of_a_pair():
  for seed in range(5):
    g = _conflicting(2, 5, seed)
    assert g[0] @ g[1] < 0
    gram = jnp.asarray(g @ g.T, jnp.float32)
    coefficients = surgery_coefficients(gram, task_orders(jax.random.key(seed), 2),
                                        jnp.ones(2, bool))
    projected = np.asarray(coefficients, np.float64) @ g
    assert projected[0] @ g[1] >= -1e-6 and projected[1] @ g[0] >= -1e-6
    _all_close(projected, _numpy_pcgrad(g, [[1], [0]]), atol=1e-5)


@pytest.mark.parametrize('key', range(4))
def test_pcgrad_many_tasks_match_explicit_vectors_in_the_same_order(key):
  g = _conflicting(4, 6, seed=10)
  g[3] = -0.5 * g[2] + 0.5 * g[0]
  orders = np.asarray(task_orders(jax.random.key(key), 4))
  assert all(sorted(row) == [0, 1, 2, 3] for row in orders)
  direction, _, _ = _run(_get('pcgrad'), g, np.ones(4), key=key)
  _all_close(direction, _numpy_pcgrad(g, orders).sum(0), atol=1e-4)


def test_pcgrad_order_matters_and_is_fixed_by_the_key():
  g = _conflicting(4, 6, seed=10)
  g[3] = -0.5 * g[2] + 0.5 * g[0]
  method = _get('pcgrad')
  results = [np.asarray(_run(method, g, np.ones(4), key=k)[0]) for k in range(8)]
  # This case is order dependent (else the key test above could not catch an ignored key) ...
  assert max(np.abs(r - results[0]).max() for r in results) > 1e-3
  # ... and a key always gives the same result, jitted or not.
  again, _, _ = _run(method, g, np.ones(4), key=5)
  np.testing.assert_array_equal(again, results[5])
  eager, _ = method.update(step_info(method, g, np.ones(4), key=5), method.init(4))
  _all_close(eager, _run(method, g, np.ones(4), key=5)[1], atol=1e-6)


def test_pcgrad_absent_task_is_skipped_and_gets_zero():
  g = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])
  direction, c, _ = _run(_get('pcgrad'), g, [1, 0, 1], present=[True, False, True])
  assert np.isfinite(c).all() and c[1] == 0
  _all_close(c[[0, 2]], [1.5, 2.0])  # the two-task hand case above
  _all_close(direction, [-0.5, 1.5])
  # A present task with a zero gradient is not projected onto either (no 0/0).
  _, c, _ = _run(_get('pcgrad'), g, [1, 1, 1])
  assert np.isfinite(c).all()
  _all_close(c[[0, 2]], [1.5, 2.0])


# ---------------------------------------------------------------------------------- GradVac

def _rows_gradvac(g, target, key, beta=0.01):
  gram = jnp.asarray(g @ g.T, jnp.float32)
  orders = task_orders(jax.random.key(key), len(g))
  c, new = vaccine(gram, jnp.asarray(target, jnp.float32), orders, jnp.ones(len(g), bool),
                   beta)
  return np.asarray(c, np.float64) @ g, np.asarray(new)


def _numpy_gradvac(g, target, orders, beta):
  """Algorithm 1 of the paper on explicit vectors, visiting j in orders[i] (j ≠ i)."""
  g = np.asarray(g, np.float64)
  target = np.array(target, np.float64)
  projected = []
  for i in range(len(g)):
    v = g[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      phi, goal = _cos(v, g[j]), target[i, j]
      if phi < goal:
        v = v + np.linalg.norm(v) * (goal * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - goal**2)) / (
            np.linalg.norm(g[j]) * np.sqrt(1 - goal**2)) * g[j]
      target[i, j] = (1 - beta) * goal + beta * phi
    projected.append(v)
  return np.array(projected), target


def _cos(a, b):
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def test_gradvac_reaches_the_target_similarity_by_hand():
  # g1 = e1, g2 = e2 (φ = 0), targets φ̂ = 1/2: w = (1/2 · 1 - 0)/(1 · sqrt(3)/2) = 1/sqrt(3),
  # g1' = (1, 1/sqrt(3)), cos(g1', g2) = (1/sqrt(3)) / sqrt(4/3) = 1/2; g2' symmetric.
  method = _get('gradvac')
  state = GradVacState(jnp.array([[0.0, 0.5], [0.5, 0.0]]))
  direction, c, new = _run(method, np.eye(2), [1, 1], state=state)
  _all_close(c, [1 + 1 / S3, 1 + 1 / S3])
  _all_close(direction, [1 + 1 / S3, 1 + 1 / S3])
  # EMA with the measured φ = 0 and β = 0.01.
  _all_close(new.target, [[0, 0.495], [0.495, 0]])


def test_gradvac_modified_gradient_has_the_target_cosine():
  rng = np.random.default_rng(0)
  for seed in range(5):
    g = _conflicting(2, 5, seed)
    target = rng.uniform(0.1, 0.9, size=(2, 2))
    projected, _ = _rows_gradvac(g, target, seed)
    for i, j in ((0, 1), (1, 0)):
      assert _cos(g[i], g[j]) < target[i, j]
      _all_close(_cos(projected[i], g[j]), target[i, j], atol=1e-4)


@pytest.mark.parametrize('key', range(2))
def test_gradvac_many_tasks_match_explicit_vectors_in_the_same_order(key):
  g = _conflicting(4, 6, seed=4)
  target = np.random.default_rng(key).uniform(-0.3, 0.6, size=(4, 4))
  np.fill_diagonal(target, 0.0)
  beta = 0.1
  method = _get('gradvac', beta=beta)
  direction, _, state = _run(method, g, np.ones(4), state=GradVacState(jnp.asarray(
      target, jnp.float32)), key=key)
  orders = np.asarray(task_orders(jax.random.key(key), 4))
  projected, expected_target = _numpy_gradvac(g, target, orders, beta)
  _all_close(direction, projected.sum(0), atol=1e-4)
  _all_close(state.target, expected_target, atol=1e-5)


def test_gradvac_with_zero_targets_is_pcgrad():
  # φ̂ = 0 (the initial state): φ < 0 triggers w = -(g_i^PC·g_j)/||g_j||², PCGrad's projection.
  for n, seed in ((2, 0), (4, 1), (4, 2)):
    g = _conflicting(n, 6, seed)
    for key in range(3):
      vac, _, _ = _run(_get('gradvac'), g, np.ones(n), key=key)
      pc, _, _ = _run(_get('pcgrad'), g, np.ones(n), key=key)
      _all_close(vac, pc, atol=1e-4)


def test_gradvac_ema_of_the_targets():
  beta = 0.25
  method = _get('gradvac', beta=beta)
  g = np.array([[1.0, 0.0], [1.0, 1.0]])  # cos = 1/sqrt(2), above the zero targets
  direction, c, state = _run(method, g, [1, 1])
  _all_close(c, [1, 1])  # no conflict below the target: unchanged
  phi = 1 / np.sqrt(2)
  _all_close(state.target, [[0, beta * phi], [beta * phi, 0]])
  # Second step: the targets rise above φ' of a new pair, which is corrected and averaged in.
  g2 = np.array([[1.0, 0.0], [0.0, 1.0]])
  _, c2, state2 = _run(method, g2, [1, 1], state=state)
  assert (np.asarray(c2) > 1).all()
  _all_close(state2.target, [[0, (1 - beta) * beta * phi], [(1 - beta) * beta * phi, 0]])


def test_gradvac_absent_task_keeps_its_targets_and_gets_zero():
  method = _get('gradvac')
  target = jnp.array([[0, 0.3, 0.2], [0.1, 0, 0.4], [0.5, 0.6, 0]], jnp.float32)
  g = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
  direction, c, state = _run(method, g, [1, 0, 1], state=GradVacState(target),
                            present=[True, False, True])
  assert np.isfinite(c).all() and c[1] == 0 and np.isfinite(direction).all()
  _all_close(np.asarray(state.target)[1], np.asarray(target)[1])
  _all_close(np.asarray(state.target)[:, 1], np.asarray(target)[:, 1])
  assert np.asarray(state.target)[0, 2] != target[0, 2]


def test_gradvac_jit_and_determinism():
  method = _get('gradvac')
  g = _conflicting(4, 6, 3)
  state = GradVacState(jnp.full((4, 4), 0.3))
  eager_c, eager_state = method.update(step_info(method, g, np.ones(4), key=7), state)
  _, c, new_state = _run(method, g, np.ones(4), state=state, key=7)
  _all_close(c, eager_c, atol=1e-6)
  _all_close(new_state.target, eager_state.target, atol=1e-6)
  _, again, again_state = _run(method, g, np.ones(4), state=state, key=7)
  np.testing.assert_array_equal(again, c)
  np.testing.assert_array_equal(again_state.target, new_state.target)


# --------------------------------------------------------------------------------- GradDrop

def _drop_update(method, grads, key, present):
  n = jax.tree.leaves(grads)[0].shape[0]
  present = jnp.ones(n, bool) if present is None else jnp.asarray(present)
  info = weighting.StepInfo(jnp.ones(n), present, jax.random.key(key), jnp.int32(0),
                            None, grads)
  like = jax.tree.map(lambda g: jax.ShapeDtypeStruct(g.shape[1:], g.dtype), grads)
  return method.update(info, weighting.init_state(method, n, like))[0]


@functools.cache
def _jitted_drop(method):
  return jax.jit(functools.partial(_drop_update, method))


def _drop(method, grads, key=0, present=None, jit=True):
  """GradDrop's update for an N-leading pytree (jitted as a whole unless jit=False)."""
  n = jax.tree.leaves(grads)[0].shape[0]
  present = np.ones(n, bool) if present is None else np.asarray(present, bool)
  if not jit:
    return _drop_update(method, grads, key, present)
  return _jitted_drop(method)(grads, key, present)


def test_graddrop_keeps_coordinates_where_all_tasks_agree():
  g = jnp.array([[1.0, -2.0, 0.0, 3.0, -0.5],
                 [2.0, -1.0, 0.0, 0.0, -0.5],
                 [0.5, 0.0, 0.0, 1.0, -1.0]])
  for key in range(20):  # P = 1 or 0 in every coordinate: nothing is ever dropped
    _all_close(_drop(_get('graddrop'), {'g': g}, key)['g'], g.sum(0), atol=0)


def test_graddrop_keeps_one_sign_per_coordinate():
  g = jnp.array([[1.0, -2.0, 0.3], [-3.0, 1.0, -0.7]])
  positive = jnp.where(g > 0, g, 0).sum(0)
  negative = jnp.where(g < 0, g, 0).sum(0)
  for key in range(10):
    out = np.asarray(_drop(_get('graddrop'), {'g': g}, key)['g'])
    assert np.all(np.isclose(out, positive) | np.isclose(out, negative))
  # The jitted update (used throughout) equals the plain one.
  np.testing.assert_array_equal(_drop(_get('graddrop'), {'g': g}, 3, jit=False)['g'],
                                _drop(_get('graddrop'), {'g': g}, 3)['g'])


def test_graddrop_keeps_the_positive_sign_with_probability_p():
  # g = (0.3, -0.7) in every coordinate: P = ½(1 + (-0.4)/1.0) = 0.3.
  g = jnp.tile(jnp.array([[0.3], [-0.7]]), (1, 100))
  method = _get('graddrop')
  outs = jax.vmap(lambda k: method.update(
      weighting.StepInfo(jnp.ones(2), jnp.ones(2, bool), k, jnp.int32(0), None, {'g': g}),
      ())[0]['g'])(jax.random.split(jax.random.key(0), 200))
  outs = np.asarray(outs)
  assert np.all(np.isclose(outs, 0.3) | np.isclose(outs, -0.7))
  # 20000 draws: the standard error is sqrt(0.21 / 20000) ≈ 0.0032.
  assert abs(np.isclose(outs, 0.3).mean() - 0.3) < 0.015


def test_graddrop_leak():
  g = {'g': jnp.tile(jnp.array([[0.3], [-0.7]]), (1, 50))}
  _all_close(_drop(_get('graddrop', leak=1.0), g)['g'], np.full(50, -0.4))
  out = np.asarray(_drop(_get('graddrop', leak=0.5), g)['g'])
  # Positive kept: 0.3 + ½(-0.7) = -0.05; negative kept: ½ 0.3 - 0.7 = -0.55.
  assert np.all(np.isclose(out, -0.05) | np.isclose(out, -0.55))
  assert np.isclose(out, -0.05).any() and np.isclose(out, -0.55).any()


def test_graddrop_pytree_and_determinism():
  base = jnp.tile(jnp.array([[1.0], [-1.0]]), (1, 64))  # P = 1/2
  grads = {'a': base, 'b': {'c': base.reshape(2, 8, 8).astype(jnp.bfloat16)}}
  method = _get('graddrop')
  out = _drop(method, grads, key=1)
  assert jax.tree.structure(out) == jax.tree.structure(
      {'a': 0, 'b': {'c': 0}})
  assert out['a'].shape == (64,) and out['b']['c'].shape == (8, 8)
  assert out['b']['c'].dtype == jnp.bfloat16
  # Each leaf draws its own U: the same gradients are dropped differently in the two leaves.
  assert not np.array_equal(np.asarray(out['a']),
                            np.asarray(out['b']['c'], np.float32).ravel())
  jax.tree.map(np.testing.assert_array_equal, out, _drop(method, grads, key=1))
  assert not np.array_equal(np.asarray(out['a']), np.asarray(_drop(method, grads, key=2)['a']))


def test_graddrop_absent_task_changes_nothing():
  rng = np.random.default_rng(0)
  g = rng.normal(size=(2, 30)).astype(np.float32)
  with_absent = np.concatenate([g[:1], np.zeros((1, 30), np.float32), g[1:]])
  method = _get('graddrop')
  out = _drop(method, {'g': jnp.asarray(with_absent)}, key=4, present=[True, False, True])
  assert np.isfinite(out['g']).all()
  np.testing.assert_array_equal(out['g'], _drop(method, {'g': jnp.asarray(g)}, key=4)['g'])


# ------------------------------------------------------------------------------ Aligned-MTL

def _numpy_aligned(g, rtol=None):
  """σ_min U Wᵀ from the SVD G = U S Wᵀ, keeping singular values above the tolerance."""
  u, s, wt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  tol = s.max() * (rtol if rtol is not None else 1e-6)
  r = int((s > tol).sum())
  return s[r - 1] * u[:, :r] @ wt[:r]


def test_aligned_mtl_orthogonal_equal_norms_unchanged():
  g = 2.0 * np.eye(3, 5)
  direction, c, _ = _run(_get('aligned_mtl'), g, np.ones(3))
  _all_close(c, [1, 1, 1])
  _all_close(direction, g.sum(0))
  _, c, _ = _run(_get('aligned_mtl', task_weights=(0.5, 1.0, 2.0)), g, np.ones(3))
  _all_close(c, [0.5, 1.0, 2.0])


def test_aligned_mtl_orthogonal_unequal_norms_by_hand():
  # G = diag(a, b), a > b: M = diag(a², b²), B = b diag(1/a, 1/b), c = (b/a, 1):
  # every task contributes a vector of norm b.
  a, b = 3.0, 0.5
  direction, c, _ = _run(_get('aligned_mtl'), [[a, 0], [0, b]], [1, 1])
  _all_close(c, [b / a, 1.0])
  _all_close(direction, [b, b])


def test_aligned_mtl_parallel_gradients_give_their_sum():
  # g2 = k g1: rank 1, v = (1, k)/sqrt(1+k²), B = v vᵀ, c = v (1+k)/sqrt(1+k²), so
  # Σ c_i g_i = (1+k)/(1+k²) (1 + k²) g1 = g1 + g2.
  k = 3.0
  g1 = np.array([1.0, -2.0, 0.5])
  direction, c, _ = _run(_get('aligned_mtl'), [g1, k * g1], [1, 1])
  assert np.isfinite(c).all()
  _all_close(c, (1 + k) / (1 + k**2) * np.array([1, k]))
  _all_close(direction, (1 + k) * g1, atol=1e-4)


@pytest.mark.parametrize('seed', range(3))
def test_aligned_mtl_gradients_have_condition_number_one(seed):
  g = _conflicting(3, 7, seed)
  b = np.asarray(alignment_matrix(jnp.asarray(g @ g.T, jnp.float32), jnp.ones(3, bool)),
                 np.float64)
  aligned = b @ g
  smallest = np.linalg.eigvalsh(g @ g.T).min()
  _all_close(aligned @ aligned.T, smallest * np.eye(3), atol=1e-4 * smallest)
  _all_close(aligned, _numpy_aligned(g), atol=1e-4)
  direction, _, _ = _run(_get('aligned_mtl'), g, np.ones(3))
  _all_close(direction, _numpy_aligned(g).sum(0), atol=1e-4)


def test_aligned_mtl_rank_deficient_gram():
  g = _conflicting(3, 7, 0)
  g[2] = g[0] + 2 * g[1]
  direction, c, _ = _run(_get('aligned_mtl'), g, np.ones(3))
  assert np.isfinite(c).all()
  expected = _numpy_aligned(g)
  s = np.linalg.svd(g, compute_uv=False)
  _all_close(expected @ expected.T,
             s[1]**2 * np.linalg.pinv(g @ g.T) @ (g @ g.T),
             atol=1e-6 * s[0]**2)  # the truth itself: λ_min times the projector on the span
  _all_close(direction, expected.sum(0), atol=1e-3)


def test_aligned_mtl_scale_invariant_coefficients():
  g = _conflicting(3, 7, 1)
  _, c, _ = _run(_get('aligned_mtl'), g, np.ones(3))
  _, c_scaled, _ = _run(_get('aligned_mtl'), 1e-3 * g, np.ones(3))
  _all_close(c_scaled, c, rtol=1e-3, atol=1e-5)


def test_aligned_mtl_absent_tasks_and_jit():
  g = _conflicting(3, 7, 2)
  with_absent = np.concatenate([g[:1], np.zeros((1, 7)), g[1:]])
  method = _get('aligned_mtl')
  direction, c, _ = _run(method, with_absent, np.ones(4), present=[True, False, True, True])
  assert np.isfinite(c).all() and c[1] == 0
  reference, c_ref, _ = _run(method, g, np.ones(3))
  _all_close(c[[0, 2, 3]], c_ref, atol=1e-4)
  _all_close(direction, reference, atol=1e-4)
  _, c_none, _ = _run(method, np.zeros((3, 4)), np.zeros(3), present=[False] * 3)
  np.testing.assert_array_equal(c_none, np.zeros(3))
  eager, _ = method.update(step_info(method, g, np.ones(3)), method.init(3))
  _all_close(eager, c_ref, atol=1e-6)
