"""MGDA, CAGrad, IMTL and Nash-MTL: coefficients from the Gram matrix.

Truths: hand-worked cases (orthogonal, opposite, scaled gradients), the defining property
of each method checked on the returned update, and scipy.optimize (float64, SLSQP) as a
second, independent solver for the optimisation problems.
"""

import functools

import jax
import numpy as np
import pytest
import scipy.optimize

from weighting_harness import step_info
from mtl_jax import weighting

ALL = ('mgda', 'cagrad', 'imtl', 'nash_mtl')


PAD = 6  # every case is padded to 6 tasks with absent ones: one compile per configuration


@functools.cache
def _method(name, **kwargs):
  """The method with a jitted update, compiled once per configuration (keeps this file
  fast). A GRAM method's update does not see the per-task gradients, so the jitted call
  gets grads=None and P causes no recompiles either."""
  m = weighting.get(name, **kwargs)
  update = jax.jit(m.update)
  return m._replace(update=lambda info, state: update(info._replace(grads=None), state))


def _run(name, grads, losses=None, *, present=None, step=0, state=None, **kwargs):
  """(direction Σ c_i g_i (P,), coefficients c (N,)) as float64 numpy.

  The N given tasks are followed by PAD - N absent ones (g = 0, L = 0); their coefficients
  are checked to be exactly 0 and dropped.
  """
  method = _method(name, **kwargs)
  grads = np.asarray(grads, np.float32)
  n = len(grads)
  losses = np.ones(n) if losses is None else np.asarray(losses)
  present = np.ones(n, bool) if present is None else np.asarray(present, bool)
  padded = np.concatenate([grads, np.zeros((PAD - n, grads.shape[1]), np.float32)])
  info = step_info(method, padded, np.concatenate([losses, np.zeros(PAD - n)]),
                   present=np.concatenate([present, np.zeros(PAD - n, bool)]), step=step)
  state = method.init(PAD) if state is None else state
  coefficients, state = method.update(info, state)
  coefficients = np.asarray(coefficients, np.float64)
  assert np.all(coefficients[n:] == 0.0)
  coefficients = coefficients[:n]
  return coefficients @ grads.astype(np.float64), coefficients, state


def _random_grads(seed, n, p=None, spread=1.0):
  """N gradients in R^P (P >= N: in general position 0 is outside their hull), sharing a
  common component so they are correlated, with norms spread over 10^±spread."""
  rng = np.random.default_rng(seed)
  p = p or n + 3
  common = rng.normal(size=p) * rng.uniform(0.0, 1.5)
  return ((common + rng.normal(size=(n, p))) *
          10.0 ** rng.uniform(-spread, spread, size=(n, 1))).astype(np.float32)


def _simplex_min(fun, n, jac=None):
  x0 = np.full(n, 1.0 / n)
  res = scipy.optimize.minimize(
      fun, x0, jac=jac, method='SLSQP', bounds=[(0.0, 1.0)] * n,
      constraints=[{'type': 'eq', 'fun': lambda w: w.sum() - 1.0}],
      options={'ftol': 1e-15, 'maxiter': 1000})
  return res.x


# ---------------------------------------------------------------------------- all methods


@pytest.mark.parametrize('name', ALL)
def test_registered_gram_method(name):
  assert name in weighting.names()
  assert weighting.get(name).needs is weighting.Needs.GRAM
  assert not any(n.startswith('_') for n in weighting.names())


@pytest.mark.parametrize('name', ALL)
def test_jit_equals_eager_and_is_deterministic(name):
  grads = _random_grads(0, 4)
  method = weighting.get(name)
  info = step_info(method, grads, [1.0, 2.0, 0.5, 3.0], key=3)
  state = method.init(4)
  with jax.disable_jit():  # op by op, loops in Python
    eager, _ = method.update(info, state)
  jitted, _ = jax.jit(method.update)(info, state)
  again, _ = jax.jit(method.update)(info, state)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(jitted, again)


@pytest.mark.parametrize('name', ALL)
def test_absent_task_is_zero_and_the_rest_is_as_if_it_did_not_exist(name):
  grads = _random_grads(1, 4)
  grads[2] = 0.0  # an absent task: L = 0, g = 0
  losses = np.array([1.0, 2.0, 0.0, 0.5])
  present = np.array([True, True, False, True])
  direction, coefficients, _ = _run(name, grads, losses, present=present)
  assert coefficients[2] == 0.0
  assert np.all(np.isfinite(coefficients))
  sub_direction, sub_coefficients, _ = _run(name, grads[present], losses[present])
  np.testing.assert_allclose(coefficients[present], sub_coefficients, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(direction, sub_direction, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize('name', ALL)
def test_degenerate_inputs_stay_finite(name):
  cases = [np.zeros((3, 4)),  # every gradient zero
           np.array([[1.0, 2.0], [1.0, 2.0], [-1.0, -2.0]]),  # duplicates and an opposite
           np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])]  # present g = 0
  for grads in cases:
    direction, coefficients, _ = _run(name, grads)
    assert np.all(np.isfinite(coefficients)) and np.all(np.isfinite(direction))
  _, coefficients, _ = _run(name, np.ones((3, 2)), present=np.zeros(3, bool))
  np.testing.assert_array_equal(coefficients, 0.0)


# ------------------------------------------------------------------------------------ MGDA


def _scipy_min_norm(grads):
  k = grads.astype(np.float64) @ grads.T.astype(np.float64)
  w = _simplex_min(lambda w: w @ k @ w, len(k), jac=lambda w: 2.0 * k @ w)
  return w @ grads.astype(np.float64)


def test_mgda_two_orthogonal_unit_gradients_get_one_half_each():
  direction, coefficients, _ = _run('mgda', [[1.0, 0.0], [0.0, 1.0]])
  np.testing.assert_allclose(coefficients, [0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(direction, [0.5, 0.5], atol=1e-6)


def test_mgda_two_opposite_gradients_give_the_zero_vector():
  # 0 = (2/3)·(1, 0) + (1/3)·(-2, 0) is in the hull.
  direction, coefficients, _ = _run('mgda', [[1.0, 0.0], [-2.0, 0.0]])
  np.testing.assert_allclose(direction, 0.0, atol=1e-5)
  np.testing.assert_allclose(coefficients, [2 / 3, 1 / 3], atol=1e-5)


def test_mgda_two_gradients_closed_form():
  # N = 2: γ = clip((g2 - g1)·g2 / ‖g1 - g2‖², 0, 1), d = γ g1 + (1 - γ) g2 (worked by hand;
  # the two clipped cases are a vertex of the hull).
  for seed in range(6):
    g1, g2 = _random_grads(10 + seed, 2, 3).astype(np.float64)
    gamma = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0.0, 1.0)
    direction, coefficients, _ = _run('mgda', [g1, g2])
    np.testing.assert_allclose(coefficients, [gamma, 1 - gamma], atol=2e-5)
    np.testing.assert_allclose(direction, gamma * g1 + (1 - gamma) * g2,
                               atol=2e-5 * np.abs([g1, g2]).max())


def test_mgda_vertex_and_face_solutions():
  # (1, 0)·(2, 1) = 2 >= ‖(1, 0)‖²: the min-norm point is the vertex g1.
  _, coefficients, _ = _run('mgda', [[1.0, 0.0], [2.0, 1.0]])
  np.testing.assert_allclose(coefficients, [1.0, 0.0], atol=1e-6)
  # g3 = (2, 2) lies beyond the face [g1, g2] whose midpoint is the min-norm point.
  _, coefficients, _ = _run('mgda', [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
  np.testing.assert_allclose(coefficients, [0.5, 0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize('n', [3, 4, 5])
def test_mgda_matches_scipy_min_norm(n):
  for seed in range(8):
    grads = _random_grads(100 * n + seed, n, spread=1.0)
    direction, coefficients, _ = _run('mgda', grads)
    assert np.all(coefficients >= 0) and abs(coefficients.sum() - 1) < 1e-5
    truth = _scipy_min_norm(grads)
    scale = np.linalg.norm(grads, axis=1).min()
    np.testing.assert_allclose(direction, truth, atol=1e-5 * scale)


def test_mgda_rank_deficient_gradients_match_scipy():
  # 5 gradients in R^3 (Gram rank 3; the ridge must not move the answer).
  for seed in range(6):
    grads = _random_grads(7 + seed, 5, 3, spread=0.5)
    direction, _, _ = _run('mgda', grads)
    truth = _scipy_min_norm(grads)
    np.testing.assert_allclose(direction, truth,
                               atol=1e-5 * np.linalg.norm(grads, axis=1).max())


def test_mgda_normalizations_apply_to_the_raw_gradients():
  grads = np.array([[3.0, 0.0], [0.0, 0.5]])
  losses = np.array([2.0, 4.0])
  # l2: ĝ are e1, e2 -> α = (1/2, 1/2), c = α/‖g‖.
  direction, coefficients, _ = _run('mgda', grads, losses, normalization='l2')
  np.testing.assert_allclose(coefficients, [0.5 / 3.0, 0.5 / 0.5], rtol=1e-5)
  np.testing.assert_allclose(direction, [0.5, 0.5], rtol=1e-5)
  # loss: ĝ = (1.5, 0), (0, 0.125) -> α ∝ (1/1.5², 1/0.125²), c = α/L.
  alpha = np.array([1 / 2.25, 64.0]) / (1 / 2.25 + 64.0)
  _, coefficients, _ = _run('mgda', grads, losses, normalization='loss')
  np.testing.assert_allclose(coefficients, alpha / losses, rtol=1e-5)
  # loss+: ĝ = e1/2, e2/4 -> α ∝ (4, 16), c = α/(L‖g‖).
  alpha = np.array([4.0, 16.0]) / 20.0
  _, coefficients, _ = _run('mgda', grads, losses, normalization='loss+')
  np.testing.assert_allclose(coefficients, alpha / (losses * [3.0, 0.5]), rtol=1e-5)
  with pytest.raises(ValueError, match='normalization'):
    weighting.get('mgda', normalization='l1')


def test_mgda_absent_zero_gradient_does_not_collapse_the_hull():
  grads = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  direction, coefficients, _ = _run('mgda', grads, present=[True, True, False])
  np.testing.assert_allclose(direction, [0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(coefficients, [0.5, 0.5, 0.0], atol=1e-6)
  # The same zero gradient marked present is in the hull: the min-norm point is 0.
  direction, _, _ = _run('mgda', grads)
  np.testing.assert_allclose(direction, 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------- CAGrad


def _cagrad_d(grads, c, **kwargs):
  """The paper's d (mean scale, no rescale) from our update: update = N d / (1 + c²)."""
  direction, coefficients, _ = _run('cagrad', grads, c=c, **kwargs)
  return direction * (1 + c ** 2) / len(grads), coefficients


def _scipy_cagrad_value(grads, c):
  """max_{‖d - g0‖ <= c‖g0‖} min_i g_i·d, solved as the primal in (d, s) by SLSQP."""
  g = grads.astype(np.float64)
  n, p = g.shape
  g0 = g.mean(0)
  rho2 = (c * np.linalg.norm(g0)) ** 2
  res = scipy.optimize.minimize(
      lambda x: -x[p], np.concatenate([g0, [(g @ g0).min()]]),
      jac=lambda x: np.concatenate([np.zeros(p), [-1.0]]), method='SLSQP',
      constraints=[{'type': 'ineq', 'fun': lambda x: g @ x[:p] - x[p],
                    'jac': lambda x: np.hstack([g, -np.ones((n, 1))])},
                   {'type': 'ineq', 'fun': lambda x: rho2 - np.sum((x[:p] - g0) ** 2),
                    'jac': lambda x: np.concatenate([-2 * (x[:p] - g0), [0.0]])}],
      options={'ftol': 1e-15, 'maxiter': 2000})
  return res.x[p]


def test_cagrad_c_zero_is_the_sum_of_gradients():
  grads = _random_grads(3, 4)
  direction, coefficients, _ = _run('cagrad', grads, c=0.0)
  np.testing.assert_allclose(coefficients, 1.0, rtol=1e-6)
  np.testing.assert_allclose(direction, grads.sum(0), rtol=1e-5, atol=1e-5)


def test_cagrad_two_orthogonal_unit_gradients():
  # By symmetry w = (1/2, 1/2), g_w = g0 = (1/2, 1/2): d = (1 + c) g0; update = 2 d/(1 + c²).
  c = 0.4
  direction, coefficients, _ = _run('cagrad', [[1.0, 0.0], [0.0, 1.0]], c=c)
  np.testing.assert_allclose(direction, [(1 + c) / (1 + c ** 2)] * 2, rtol=1e-5)
  np.testing.assert_allclose(coefficients, [(1 + c) / (1 + c ** 2)] * 2, rtol=1e-5)
  direction0, _, _ = _run('cagrad', [[1.0, 0.0], [0.0, 1.0]], c=c, rescale=0)
  direction2, _, _ = _run('cagrad', [[1.0, 0.0], [0.0, 1.0]], c=c, rescale=2)
  np.testing.assert_allclose(direction0, [1 + c] * 2, rtol=1e-5)
  np.testing.assert_allclose(direction2, [1.0, 1.0], rtol=1e-5)


def test_cagrad_opposite_gradients_of_equal_norm_give_zero():
  direction, coefficients, _ = _run('cagrad', [[1.0, 2.0], [-1.0, -2.0]])
  np.testing.assert_allclose(direction, 0.0, atol=1e-6)
  assert np.all(np.isfinite(coefficients))


@pytest.mark.parametrize('c,sizes', [(0.4, (2, 3, 4, 5)), (0.1, (4,)), (0.9, (4,))])
def test_cagrad_stays_in_the_ball_and_maximises_the_worst_task(c, sizes):
  for seed in range(8):
    n = sizes[seed % len(sizes)]
    grads = _random_grads(50 + seed, n, spread=1.0).astype(np.float64)
    d, _ = _cagrad_d(grads, c)
    g0 = grads.mean(0)
    # The requirement: ‖d - g0‖ <= c‖g0‖ (with equality at the solution).
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-5) + 1e-7
    truth = _scipy_cagrad_value(grads, c)
    scale = np.linalg.norm(grads, axis=1).max() * np.linalg.norm(g0)
    assert abs((grads @ d).min() - truth) <= 1e-5 * scale, (seed, (grads @ d).min(), truth)


def test_cagrad_is_better_than_the_mean_for_the_worst_task():
  # Conflicting gradients: the mean hurts task 2, CAGrad must do at least as well.
  grads = np.array([[4.0, 0.5], [-1.0, 0.6]])
  d, _ = _cagrad_d(grads, 0.4)
  assert (grads @ d).min() > (grads @ grads.mean(0)).min() + 1e-3


def test_cagrad_bad_arguments():
  with pytest.raises(ValueError, match='rescale'):
    weighting.get('cagrad', rescale=3)
  with pytest.raises(ValueError, match='c must be'):
    weighting.get('cagrad', c=-0.1)


# ------------------------------------------------------------------------------------ IMTL


def _paper_imtl(grads):
  """The paper's formula, with task 1 as the reference, in float64."""
  g = grads.astype(np.float64)
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  d_mat = g[:1] - g[1:]
  u_mat = u[:1] - u[1:]
  alpha = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
  return np.concatenate([[1 - alpha.sum()], alpha])


def test_imtl_two_orthogonal_gradients_of_different_norms():
  # g1 = (a, 0), g2 = (0, b): α ∝ K⁻¹(a, b) = (1/a, 1/b) -> α = (b, a)/(a + b),
  # d = (ab, ab)/(a + b), whose projections on e1 and e2 are both ab/(a + b).
  a, b = 3.0, 0.5
  direction, coefficients, _ = _run('imtl', [[a, 0.0], [0.0, b]])
  np.testing.assert_allclose(coefficients, [b / (a + b), a / (a + b)], rtol=1e-5)
  np.testing.assert_allclose(direction, [a * b / (a + b)] * 2, rtol=1e-5)


@pytest.mark.parametrize('n', [2, 3, 4, 6])
def test_imtl_equal_projections_and_the_papers_formula(n):
  for seed in range(5):
    grads = _random_grads(200 * n + seed, n, spread=1.0)
    direction, coefficients, _ = _run('imtl', grads)
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    projections = units @ direction
    np.testing.assert_allclose(projections, projections.mean(),
                               rtol=1e-4, atol=1e-5 * np.abs(projections).max())
    assert abs(coefficients.sum() - 1) < 1e-5
    np.testing.assert_allclose(coefficients, _paper_imtl(grads), rtol=1e-3, atol=1e-5)


def test_imtl_single_task_is_its_gradient():
  direction, coefficients, _ = _run('imtl', [[2.0, -1.0], [5.0, 5.0]], present=[True, False])
  np.testing.assert_allclose(coefficients, [1.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(direction, [2.0, -1.0], rtol=1e-6)


def _reference_imtl(steps, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  """The whole method from the paper's definition, float64 numpy: each step, the paper's
  IMTL-G formula on the scaled gradients e^{s_i} g_i of the present tasks, whose α
  multiplies e^{s_i} g_i; then torch's Adam(lr, weight_decay=wd) written out (decay added
  to the gradient) on s with ∂/∂s_i (e^{s_i} L_i - s_i) = e^{s_i} L_i - 1, absent tasks'
  s_i and moments untouched. Returns [(coefficients on the raw g_i, s after the step)]."""
  n = len(steps[0][0])
  s, m, v = np.zeros(n), np.zeros(n), np.zeros(n)
  out = []
  for count, (g, losses, present) in enumerate(steps, start=1):
    scale = np.exp(s)
    c = np.zeros(n)
    c[present] = _paper_imtl(scale[present, None] * g[present]) * scale[present]
    grad = scale * losses - 1.0 + wd * s
    m_new, v_new = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad ** 2
    move = lr * (m_new / (1 - b1 ** count)) / (np.sqrt(v_new / (1 - b2 ** count)) + eps)
    s, m, v = (np.where(present, new, old) for new, old in
               ((s - move, s), (m_new, m), (v_new, v)))
    out.append((c, s))
  return out


def _imtl_steps(steps, **kwargs):
  """Our imtl(**kwargs) over `steps` [(G, losses, present)]: [(coefficients, s after the
  step, head weights during it)]."""
  method = _method('imtl', **kwargs)
  state, out = None, []
  for t, (g, losses, present) in enumerate(steps):
    heads = None if state is None else weighting.head_weights(
        method, step_info(method, np.pad(g, ((0, PAD - len(g)), (0, 0))),
                          np.pad(losses, (0, PAD - len(g))),
                          present=np.pad(present, (0, PAD - len(g)))), state)
    _, coefficients, state = _run('imtl', g, losses, present=present, step=t, state=state,
                                  **kwargs)
    n = len(g)
    out.append((coefficients, np.asarray(state.log_scale)[:n],
                None if heads is None else np.asarray(heads)[:n]))
  return out


_IMTL_ARGS = {'learning_rate': 0.05, 'weight_decay': 0.1}


def test_imtl_two_orthogonal_gradients_after_the_scale_moved():
  # Hand-derived. Step 0 (s = 0): α = (b, a)/(a + b). ∂/∂s = e^s L - 1 = (-0.5, 1), and
  # Adam's first step moves each s_i by lr against its gradient's sign (s = 0, so no
  # decay): s = (lr, -lr). Step 1 runs IMTL-G on (e^{s_1} a e_1, e^{s_2} b e_2):
  # α̃ = (e^{s_2} b, e^{s_1} a)/(e^{s_1} a + e^{s_2} b), so on the raw g_i
  # c = e^{s_1 + s_2} (b, a)/(e^{s_1} a + e^{s_2} b) and d = e^{s_1 + s_2} ab/(…) (1, 1):
  # the same direction as at s = 0, another length.
  a, b, lr = 3.0, 0.5, _IMTL_ARGS['learning_rate']
  g = np.array([[a, 0.0], [0.0, b]], np.float32)
  losses, present = np.array([0.5, 2.0]), np.array([True, True])
  (c0, s0, _), (c1, _, heads1) = _imtl_steps([(g, losses, present)] * 2, **_IMTL_ARGS)
  np.testing.assert_allclose(c0, [b / (a + b), a / (a + b)], rtol=1e-5)
  np.testing.assert_allclose(s0, [lr, -lr], rtol=1e-5)
  e1, e2 = np.exp(lr), np.exp(-lr)
  np.testing.assert_allclose(c1, e1 * e2 * np.array([b, a]) / (e1 * a + e2 * b), rtol=1e-5)
  np.testing.assert_allclose(c1 @ g, [e1 * e2 * a * b / (e1 * a + e2 * b)] * 2, rtol=1e-5)
  np.testing.assert_allclose(heads1, [e1, e2], rtol=1e-6)  # heads train on e^{s_i} L_i


@pytest.mark.parametrize('n', [2, 3, 4])
def test_imtl_whole_method_matches_the_paper_over_steps(n):
  rng = np.random.default_rng(n)
  steps = []
  for t in range(6):
    g = _random_grads(300 * n + t, n, spread=0.5)
    # Losses far from 1 on both sides, so every s_i moves steadily (e^s L → 1).
    losses = np.array([0.3, 2.5, 0.5, 2.0])[:n] * rng.uniform(0.9, 1.1, size=n)
    present = np.ones(n, bool)
    if t == 3:  # one task absent: no coefficient, its s and Adam moments stay
      present[1] = False
      g[1], losses[1] = 0.0, 0.0
    steps.append((g, losses, present))
  ours = _imtl_steps(steps, **_IMTL_ARGS)
  reference = _reference_imtl([(g.astype(np.float64), l, p) for g, l, p in steps],
                              **{'lr': _IMTL_ARGS['learning_rate'],
                                 'wd': _IMTL_ARGS['weight_decay']})
  for t, ((c, s, heads), (c_ref, s_ref), (g, _, present)) in enumerate(
      zip(ours, reference, steps)):
    np.testing.assert_allclose(c, c_ref, rtol=1e-3, atol=1e-5, err_msg=f'step {t}')
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-6, err_msg=f'step {t}')
    # The paper's defining property, on the raw unit gradients: equal projections.
    units = g[present] / np.linalg.norm(g[present], axis=1, keepdims=True)
    projections = units @ (c @ g)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-4,
                               atol=1e-5 * np.abs(projections).max())
    if t:
      np.testing.assert_allclose(heads, np.where(present, np.exp(reference[t - 1][1]), 0.0),
                                 rtol=1e-5)
  assert ours[3][0][1] == 0.0 and ours[3][1][1] == ours[2][1][1]
  # Not vacuous: the scales moved, and they changed the coefficients (IMTL-G alone differs).
  assert np.abs(ours[-1][1]).min() > 0.1
  assert np.abs(ours[-1][0] - _paper_imtl(steps[-1][0])).max() > 1e-2 * np.abs(ours[-1][0]).max()


def test_imtl_scaled_losses_go_to_one():
  # IMTL-L's stationary point: e^{s_i} L_i = 1 (the zero of e^s L - 1), whatever L_i.
  method = weighting.get('imtl', learning_rate=0.02, weight_decay=0.0)
  losses = np.array([0.3, 4.0, 1.0], np.float32)
  info = step_info(method, np.eye(3, 4), losses)
  update = jax.jit(method.update)
  state = method.init(3)
  for _ in range(400):
    _, state = update(info, state)
  np.testing.assert_allclose(np.exp(state.log_scale) * losses, 1.0, atol=0.05)


def test_imtl_without_learning_rate_is_imtl_g():
  g = _random_grads(7, 3)
  steps = [(g, np.array([0.3, 1.0, 3.0]), np.ones(3, bool))] * 3
  for c, s, _ in _imtl_steps(steps, learning_rate=0.0, weight_decay=0.0):
    np.testing.assert_array_equal(s, 0.0)
    np.testing.assert_allclose(c, _paper_imtl(g), rtol=1e-3, atol=1e-5)


# -------------------------------------------------------------------------------- Nash-MTL

RAW = {'max_norm': 0.0}


def test_nash_two_orthogonal_gradients_get_inverse_norms():
  # K = diag(a², b²): a² α1 = 1/α1 -> α1 = 1/a.
  a, b = 3.0, 0.5
  direction, coefficients, _ = _run('nash_mtl', [[a, 0.0], [0.0, b]], **RAW)
  np.testing.assert_allclose(coefficients, [1 / a, 1 / b], rtol=1e-5)
  np.testing.assert_allclose(direction, [1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize('n', [2, 3, 4, 5, 6])
def test_nash_bargaining_condition(n):
  for seed in range(6):
    grads = _random_grads(300 * n + seed, n, spread=1.0)
    direction, alpha, _ = _run('nash_mtl', grads, **RAW)
    k = grads.astype(np.float64) @ grads.T.astype(np.float64)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(alpha * (k @ alpha), 1.0, rtol=1e-4)
    # Hence ‖Σ α_i g_i‖² = αᵀKα = N.
    np.testing.assert_allclose(direction @ direction, n, rtol=1e-4)


def test_nash_is_invariant_to_rescaling_a_task():
  # g_i -> s_i g_i: α_i -> α_i / s_i, the update is unchanged.
  grads = _random_grads(5, 4)
  scales = np.array([10.0, 0.1, 1.0, 3.0], np.float32)
  direction, alpha, _ = _run('nash_mtl', grads, **RAW)
  scaled_direction, scaled_alpha, _ = _run('nash_mtl', grads * scales[:, None], **RAW)
  np.testing.assert_allclose(scaled_alpha, alpha / scales, rtol=1e-4)
  np.testing.assert_allclose(scaled_direction, direction, rtol=1e-4, atol=1e-5)


def test_nash_clipping():
  grads = _random_grads(6, 3) * 4.0
  # Unclipped, ‖Σ α_i g_i‖² = αᵀKα = Σ α_i (Kα)_i = N.
  direction, _, _ = _run('nash_mtl', grads, **RAW)
  np.testing.assert_allclose(np.linalg.norm(direction), np.sqrt(3), rtol=1e-4)
  # Default max_norm = 1: the update is clipped to norm 1, same direction.
  clipped, _, _ = _run('nash_mtl', grads)
  np.testing.assert_allclose(np.linalg.norm(clipped), 1.0, rtol=1e-4)
  np.testing.assert_allclose(clipped, direction / np.linalg.norm(direction), rtol=1e-4,
                             atol=1e-6)
  # A large max_norm leaves it alone.
  unclipped, _, _ = _run('nash_mtl', grads, max_norm=1e6)
  np.testing.assert_allclose(unclipped, direction, rtol=1e-5)


def test_nash_update_weights_every_reuses_the_solved_weights():
  kwargs = dict(update_weights_every=2, **RAW)
  first, second = _random_grads(8, 3), _random_grads(9, 3)
  _, alpha0, state = _run('nash_mtl', first, step=0, **kwargs)
  _, alpha1, state1 = _run('nash_mtl', second, step=1, state=state, **kwargs)
  np.testing.assert_array_equal(alpha1, alpha0)  # step 1: reused
  _, alpha2, _ = _run('nash_mtl', second, step=2, state=state1, **kwargs)
  _, fresh, _ = _run('nash_mtl', second, **RAW)
  np.testing.assert_allclose(alpha2, fresh, rtol=1e-6)  # step 2: solved again
  assert not np.allclose(alpha2, alpha0, rtol=1e-2)
  with pytest.raises(ValueError, match='update_weights_every'):
    weighting.get('nash_mtl', update_weights_every=0)
