"""uncertainty, dwa, rlw, famo, doremi (loss weighters), gradnorm (GRAM) and db_mtl (GRADS).

Each method is checked against hand-worked cases, a second implementation written
differently (numpy, or autodiff of the method's own objective), the paper's properties,
absent tasks, jit and determinism.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import weighting
from mtl_jax.weighting import StepInfo
from mtl_jax.weighting.gradnorm import squared_norms
from weighting_harness import step_info


def _get(name, **kwargs):
  return weighting.get(name, **kwargs)


def _update(method):
  # Eager: JAX caches each primitive across method instances, cheaper here than one
  # compilation per instance. jit is tested once per method below.
  return method.update


def _init(method, grads):
  like = {'g': jax.ShapeDtypeStruct(np.shape(grads)[1:], jnp.float32)}
  return weighting.init_state(method, np.shape(grads)[0], like)


def _run1(method, grads, losses, state=None, **info_kwargs):
  """(out, new state) of one update, with the StepInfo the harness builds."""
  state = _init(method, grads) if state is None else state
  return _update(method)(step_info(method, grads, losses, **info_kwargs), state)


def _run_many(method, grads, losses_seq, present_seq=None, state=None):
  """Runs the update over a sequence of steps; (outputs, final state)."""
  outs = []
  for t, losses in enumerate(losses_seq):
    present = None if present_seq is None else present_seq[t]
    out, state = _run1(method, grads, losses, state, present=present, key=t, step=t)
    outs.append(out)
  return outs, state


def _numpy_adam(grads_seq, x0, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  """Adam as torch/optax define it, with L2 weight decay added to the gradient."""
  x, m, v = np.array(x0, np.float64), 0.0, 0.0
  for t, grad_fn in enumerate(grads_seq, start=1):
    g = grad_fn(x) + weight_decay * x
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return x


# ----------------------------------------------------------------------------- uncertainty

def test_uncertainty_first_step_weights_are_one_half():
  weights, _ = _run1(_get('uncertainty'), np.eye(3), [0.3, 2.0, 5.0])
  np.testing.assert_allclose(weights, [0.5, 0.5, 0.5])


def test_uncertainty_log_variance_follows_adam_on_the_objective_gradient():
  losses_seq = [np.array([0.3, 2.0, 5.0]), np.array([0.2, 2.5, 4.0]), np.array([0.4, 1.0, 6.0])]
  lr = 0.1
  outs, state = _run_many(_get('uncertainty', learning_rate=lr), np.eye(3), losses_seq)
  objective = lambda s, l: jnp.sum(jnp.exp(-s) * l / 2 + s / 2)
  grad_fns = [lambda s, l=l: np.asarray(jax.grad(objective)(jnp.asarray(s), jnp.asarray(l)))
              for l in losses_seq]
  expected = _numpy_adam(grad_fns, np.zeros(3), lr)
  np.testing.assert_allclose(state.log_variance, expected, rtol=1e-4, atol=1e-6)
  # The weights of each step are exp(-s)/2 of the s before that step.
  s1 = _numpy_adam(grad_fns[:1], np.zeros(3), lr)
  np.testing.assert_allclose(outs[1], np.exp(-s1) / 2, rtol=1e-5)


def test_uncertainty_variance_converges_to_the_loss():
  losses = jnp.array([0.3, 1.0, 4.0])
  method = _get('uncertainty', learning_rate=0.01)
  info = step_info(method, np.eye(3), losses)

  def body(state, _):
    return method.update(info, state)[1], None

  state, _ = jax.lax.scan(body, method.init(3), None, length=3000)
  np.testing.assert_allclose(jnp.exp(state.log_variance), losses, rtol=2e-2)
  # At the fixed point the weight is 1 / (2 L_i).
  weights, _ = _update(method)(info, state)
  np.testing.assert_allclose(weights, 1 / (2 * losses), rtol=2e-2)


def test_uncertainty_absent_task_keeps_its_variance():
  method = _get('uncertainty', learning_rate=0.1)
  present = [[True, True, True], [True, False, True], [True, False, True]]
  losses = [[1.0, 3.0, 2.0], [1.0, 0.0, 2.0], [1.0, 0.0, 2.0]]
  outs, state = _run_many(method, np.eye(3), losses, present)
  _, after_one = _run_many(method, np.eye(3), losses[:1])
  assert outs[1][1] == 0 and outs[2][1] == 0
  assert state.log_variance[1] == after_one.log_variance[1]
  mu = state.opt_state[0].mu
  assert mu[1] == after_one.opt_state[0].mu[1]
  assert np.all(np.isfinite(state.log_variance))


# ----------------------------------------------------------------------------- dwa

def test_dwa_hand_computed_weights_per_step():
  method = _get('dwa', window=1)
  outs, _ = _run_many(method, np.eye(2), [[1.0, 2.0], [0.5, 1.5], [9.0, 9.0]])
  np.testing.assert_allclose(outs[0], [1, 1])
  np.testing.assert_allclose(outs[1], [1, 1])
  r = np.array([0.5 / 1.0, 1.5 / 2.0])
  np.testing.assert_allclose(outs[2], 2 * np.exp(r / 2) / np.exp(r / 2).sum(), rtol=1e-6)


def _dwa_fifo(losses_seq, window, temperature):
  """The iteration-window DWA written as a plain list of past losses."""
  past, weights = [], []
  n = len(losses_seq[0])
  for losses in losses_seq:
    if len(past) >= 2 * window:
      recent = np.mean(past[-window:], axis=0)
      older = np.mean(past[-2 * window:-window], axis=0)
      e = np.exp(recent / older / temperature)
      weights.append(n * e / e.sum())
    else:
      weights.append(np.ones(n))
    past.append(np.asarray(losses, np.float64))
  return weights


def test_dwa_matches_a_sliding_window_reference():
  rng = np.random.default_rng(0)
  losses_seq = rng.uniform(0.2, 3.0, size=(12, 3))
  method = _get('dwa', window=3, temperature=1.5)
  outs, _ = _run_many(method, np.eye(3), losses_seq)
  for out, expected in zip(outs, _dwa_fifo(losses_seq, 3, 1.5)):
    np.testing.assert_allclose(out, expected, rtol=1e-5)
  assert not np.allclose(outs[-1], 1.0)  # the case exercises non-trivial weights


def test_dwa_equal_ratios_give_ones_and_weights_sum_to_n():
  base = np.array([0.5, 2.0, 7.0])
  outs, _ = _run_many(_get('dwa', window=2), np.eye(3),
                      [base * 0.9 ** t for t in range(8)])
  for out in outs:
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
  rng = np.random.default_rng(1)
  outs, _ = _run_many(_get('dwa', window=1), np.eye(3), rng.uniform(0.1, 2, (5, 3)))
  for out in outs:
    np.testing.assert_allclose(np.sum(out), 3.0, rtol=1e-6)


def test_dwa_absent_task_history_and_weight():
  method = _get('dwa', window=1)
  losses = [[1.0, 2.0, 4.0], [0.5, 0.0, 2.0], [0.25, 1.0, 1.0], [0.1, 0.5, 0.5],
            [0.1, 0.0, 0.5]]
  present = [[True] * 3, [True, False, True], [True] * 3, [True] * 3, [True, False, True]]
  outs, state = _run_many(method, np.eye(3), losses, present)
  assert outs[1][1] == 0
  # Step 2: task 1 has one recorded loss only -> warm-up ones for every present task.
  np.testing.assert_allclose(outs[2], [1, 1, 1])
  # Step 3: task 1's history is (2.0, 1.0), its step-1 absence skipped.
  r = np.array([0.25 / 0.5, 1.0 / 2.0, 1.0 / 2.0])
  np.testing.assert_allclose(outs[3], 3 * np.exp(r / 2) / np.exp(r / 2).sum(), rtol=1e-6)
  # Step 4: task 1 absent: weight 0, the other two share n = 2.
  r = np.array([0.1 / 0.25, 0.5 / 1.0])
  np.testing.assert_allclose(outs[4][jnp.array([0, 2])], 2 * np.exp(r / 2) / np.exp(r / 2).sum(),
                             rtol=1e-6)
  assert outs[4][1] == 0
  np.testing.assert_array_equal(state.count, [5, 3, 5])


# ----------------------------------------------------------------------------- rlw

def test_rlw_is_deterministic_given_the_key_and_on_the_simplex():
  method = _get('rlw')
  a = _run1(method, np.eye(4), np.ones(4), key=3)[0]
  b = _run1(method, np.eye(4), np.ones(4), key=3)[0]
  c = _run1(method, np.eye(4), np.ones(4), key=4)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert np.all(a > 0)
  np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-6)


def test_rlw_is_softmax_of_a_standard_normal():
  method = _get('rlw')
  keys = jax.random.split(jax.random.key(0), 4000)
  info = step_info(method, np.eye(4), np.ones(4))
  weights = jax.vmap(lambda k: method.update(info._replace(key=k), method.init(4))[0])(keys)
  # E[λ_i] = 1/N by symmetry; standard error of the mean is < 0.003 here.
  np.testing.assert_allclose(weights.mean(0), 0.25, atol=0.01)
  # log(λ_0/λ_1) = z_0 - z_1 ~ N(0, 2).
  log_ratio = np.log(weights[:, 0] / weights[:, 1])
  assert abs(log_ratio.var() - 2.0) < 0.2
  assert abs(log_ratio.mean()) < 0.1


def test_rlw_absent_tasks_and_rbg_keys():
  method = _get('rlw')
  info = step_info(method, np.eye(3), [1.0, 0.0, 1.0], present=[True, False, True])
  info = info._replace(key=jax.random.key(5, impl='unsafe_rbg'))
  weights, _ = _update(method)(info, method.init(3))
  assert weights[1] == 0
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(weights, method.update(info, method.init(3))[0])


# ----------------------------------------------------------------------------- famo

def test_famo_weights_are_the_gradient_of_its_objective():
  method = _get('famo')
  logits = jnp.array([0.3, -1.0, 0.5])
  losses = jnp.array([0.7, 2.0, 0.1])
  state = method.init(3)._replace(logits=logits)
  weights, new_state = _run1(method, np.eye(3), losses, state=state)
  z = jax.nn.softmax(logits)
  c = jnp.sum(z / losses)
  expected = jax.grad(lambda l: jnp.sum(z * jnp.log(l)) / c)(losses)
  np.testing.assert_allclose(weights, expected, rtol=1e-5)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  # The first step has no loss decrease: ξ unchanged.
  np.testing.assert_array_equal(new_state.logits, logits)


def test_famo_logits_follow_adam_on_the_loss_decrease():
  lr, gamma = 0.1, 0.01
  method = _get('famo', learning_rate=lr, weight_decay=gamma)
  losses_seq = [np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.9, 3.5]),
                np.array([0.4, 1.0, 3.0]), np.array([0.3, 1.1, 2.0])]
  outs, state = _run_many(method, np.eye(3), losses_seq)
  decrease = [np.log(a) - np.log(b) for a, b in zip(losses_seq, losses_seq[1:])]
  grad_fns = [lambda x, d=d: np.asarray(jax.grad(
      lambda xi: jnp.dot(jax.nn.softmax(xi), jnp.asarray(d, jnp.float32)))(
          jnp.asarray(x, jnp.float32)), np.float64) for d in decrease]
  expected = _numpy_adam(grad_fns, np.zeros(3), lr, weight_decay=gamma)
  np.testing.assert_allclose(state.logits, expected, rtol=1e-4, atol=1e-6)
  # The weights of the last step use the logits after that step's update.
  z = np.exp(expected) / np.exp(expected).sum()
  inv = z / losses_seq[-1]
  np.testing.assert_allclose(outs[-1], inv / inv.sum(), rtol=1e-4)


def test_famo_task_that_improves_faster_loses_logit():
  losses_seq = [np.array([2.0 * 0.8 ** t, 2.0]) for t in range(12)]
  outs, state = _run_many(_get('famo'), np.eye(2), losses_seq)
  assert state.logits[0] < state.logits[1]
  assert state.logits[0] < 0 < state.logits[1]


def test_famo_absent_task():
  method = _get('famo', learning_rate=0.1, weight_decay=0.01)
  losses = [[1.0, 2.0, 3.0], [0.5, 0.0, 2.0], [0.2, 1.0, 1.0]]
  present = [[True] * 3, [True, False, True], [True] * 3]
  outs, state = _run_many(method, np.eye(3), losses, present)
  assert outs[1][1] == 0
  np.testing.assert_allclose(outs[1].sum(), 1.0, rtol=1e-6)
  # Task 1 was absent at step 1, so no decrease exists for it at steps 1 and 2.
  assert state.logits[1] == 0
  assert state.logits[0] != 0 and state.logits[2] != 0
  for out in outs:
    assert np.all(np.isfinite(out))


# ----------------------------------------------------------------------------- gradnorm

def test_gradnorm_two_task_hand_computed_updates():
  # Gradient norms 3 and 1 (orthogonal). Adam's first steps with a constant-sign gradient
  # move each weight by exactly lr against the sign.
  grads = np.array([[3.0, 0.0], [0.0, 1.0]])
  method = _get('gradnorm', learning_rate=0.1, alpha=1.5)
  outs, state = _run_many(method, grads, [[1.0, 1.0], [0.5, 1.0], [0.5, 1.0]])
  # Step 0: w = (1, 1); G = (3, 1), target Ḡ r^α = (2, 2) -> w_0 down, w_1 up.
  np.testing.assert_allclose(outs[0], [1, 1])
  np.testing.assert_allclose(outs[1], [0.9, 1.1], rtol=1e-5)
  # Step 1: L̃ = (0.5, 1), r = (2/3, 4/3); G = (2.7, 1.1), Ḡ = 1.9,
  # target = 1.9 r^1.5 = (1.034, 2.925): again w_0 down, w_1 up.
  np.testing.assert_allclose(outs[2], [0.8, 1.2], rtol=1e-5)
  np.testing.assert_allclose(state.initial_losses, [1.0, 1.0])


def test_gradnorm_equal_norms_and_rates_keep_weights_equal():
  grads = 2 * np.eye(3)
  losses = [np.array([1.0, 2.0, 3.0]) * 0.8 ** t for t in range(5)]
  outs, state = _run_many(_get('gradnorm', learning_rate=0.1), grads, losses)
  for out in outs:
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
  np.testing.assert_allclose(state.weights, 1.0, rtol=1e-6)


def test_gradnorm_larger_gradient_loses_weight_and_sum_stays_n():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(3, 5)) * np.array([[4.0], [1.0], [0.5]])
  outs, state = _run_many(_get('gradnorm', learning_rate=0.1), grads, [np.ones(3)] * 6)
  assert state.weights[0] < 1 < state.weights[2]
  np.testing.assert_allclose(state.weights.sum(), 3.0, rtol=1e-6)


def test_gradnorm_layer_uses_only_that_subtree():
  # Subtree 'a' has norms (1, 3), 'b' has (5, 1): the weights move in opposite directions.
  grads = {'a': {'x': jnp.array([[1.0, 0.0], [0.0, 3.0]])},
           'ab': jnp.array([[0.0], [100.0]]),  # a sibling whose name extends 'a'
           'b': jnp.array([[5.0], [1.0]])}
  np.testing.assert_allclose(squared_norms(grads, 'a'), [1.0, 9.0])
  gram = weighting.gram_matrix(grads)

  def step(layer):
    method = _get('gradnorm', learning_rate=0.1, layer=layer)
    info = StepInfo(jnp.ones(2), jnp.ones(2, bool), jax.random.key(0), jnp.int32(0), gram, grads)
    return method.update(info, method.init(2))[1].weights

  np.testing.assert_allclose(step('a'), [1.1, 0.9], rtol=1e-5)
  np.testing.assert_allclose(step('b'), [0.9, 1.1], rtol=1e-5)
  with pytest.raises(ValueError, match='matches no gradient'):
    step('c')


def test_gradnorm_absent_task():
  grads = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
  method = _get('gradnorm', learning_rate=0.1)
  present = [[True] * 3, [True, False, True], [True, False, True]]
  losses = [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
  outs, state = _run_many(method, grads, losses, present)
  assert outs[1][1] == 0 and outs[2][1] == 0
  w_after_first = _run_many(method, grads, losses[:1])[1].weights
  assert state.weights[1] == w_after_first[1]
  np.testing.assert_allclose(state.weights.sum(), 3.0, rtol=1e-6)
  assert np.all(np.isfinite(state.weights))
  # A task first seen later records its own L(0).
  outs, state = _run_many(method, grads, [[1.0, 0.0, 1.0], [1.0, 5.0, 1.0]],
                          [[True, False, True], [True] * 3])
  np.testing.assert_allclose(state.initial_losses, [1.0, 5.0, 1.0])


# ----------------------------------------------------------------------------- db_mtl

def test_db_mtl_balances_orthogonal_magnitudes_by_hand():
  grads = np.diag([3.0, 1.0, 0.5])
  direction = _run1(_get('db_mtl', beta=0.0), grads, [1.0, 2.0, 4.0])[0]['g']
  # log-gradients (3, 0, 0), (0, 0.5, 0), (0, 0, 0.125): each scaled to the largest norm 3.
  np.testing.assert_allclose(direction, [3.0, 3.0, 3.0], rtol=1e-6)


def test_db_mtl_every_term_has_the_largest_norm():
  rng = np.random.default_rng(0)
  grads, losses = rng.normal(size=(3, 6)), np.array([0.5, 1.5, 3.0])
  direction = _run1(_get('db_mtl', beta=0.0), grads, losses)[0]['g']
  log_grads = grads / losses[:, None]
  norms = np.linalg.norm(log_grads, axis=1)
  terms = log_grads * (norms.max() / norms)[:, None]
  np.testing.assert_allclose(np.linalg.norm(terms, axis=1), norms.max(), rtol=1e-6)
  np.testing.assert_allclose(direction, terms.sum(0), rtol=1e-5)


def test_db_mtl_is_invariant_to_loss_scale():
  rng = np.random.default_rng(1)
  grads, losses = rng.normal(size=(3, 6)), np.array([0.5, 1.5, 3.0])
  scales = np.array([10.0, 0.01, 3.0])
  a = _run1(_get('db_mtl', beta=0.0), grads, losses)[0]['g']
  b = _run1(_get('db_mtl', beta=0.0), grads * scales[:, None], losses * scales)[0]['g']
  np.testing.assert_allclose(a, b, rtol=1e-5)


def _db_mtl_reference(grads_seq, losses_seq, beta, sigma):
  buffer, directions = np.zeros_like(grads_seq[0]), []
  for t, (g, l) in enumerate(zip(grads_seq, losses_seq), start=1):
    log_g = g / (l[:, None] + 1e-8)
    buffer = log_g + beta / t ** sigma * (buffer - log_g)
    norms = np.linalg.norm(buffer, axis=1)
    directions.append(((norms.max() / (norms + 1e-8))[:, None] * buffer).sum(0))
  return directions


@pytest.mark.parametrize('sigma', [0.0, 0.5])
def test_db_mtl_moving_average_matches_a_reference(sigma):
  rng = np.random.default_rng(2)
  grads_seq = rng.normal(size=(4, 3, 5))
  losses_seq = rng.uniform(0.2, 2.0, size=(4, 3))
  method = _get('db_mtl', beta=0.9, beta_sigma=sigma)
  update, state = _update(method), _init(method, grads_seq[0])
  for t, (g, l) in enumerate(zip(grads_seq, losses_seq)):
    out, state = update(step_info(method, g, l, step=t), state)
    expected = _db_mtl_reference(grads_seq[:t + 1], losses_seq[:t + 1], 0.9, sigma)[-1]
    np.testing.assert_allclose(out['g'], expected, rtol=1e-4, atol=1e-6)


def test_db_mtl_absent_task():
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(3, 4))
  method = _get('db_mtl')
  update, state = _update(method), _init(method, grads)
  _, state = update(step_info(method, grads, [1.0, 2.0, 3.0]), state)
  ema_before = state.ema['g'][1]
  masked = grads * np.array([[1.0], [0.0], [1.0]])
  info = step_info(method, masked, [1.0, 0.0, 3.0], present=[True, False, True])
  out, state = update(info, state)
  np.testing.assert_array_equal(state.ema['g'][1], ema_before)
  np.testing.assert_array_equal(state.count, [2, 1, 2])
  e = np.asarray(state.ema['g'])
  norms = np.linalg.norm(e, axis=1)
  expected = (norms[[0, 2]].max() / (norms[[0, 2]] + 1e-8))[:, None] * e[[0, 2]]
  np.testing.assert_allclose(out['g'], expected.sum(0), rtol=1e-5)
  assert np.all(np.isfinite(out['g']))


def test_db_mtl_checks_its_arguments():
  with pytest.raises(ValueError, match='beta'):
    _get('db_mtl', beta=1.0)


# ----------------------------------------------------------------------------- doremi

def _doremi_numpy(losses_seq, reference, step_size, smoothing, every):
  """Xie et al. 2023, Algorithm 1, in numpy: each step's weights N·α, then α moves on the mean
  of max(L - ref, 0) over the last `every` steps."""
  n = len(reference)
  alpha, total, out = np.full(n, 1.0 / n), np.zeros(n), []
  for t, losses in enumerate(losses_seq, start=1):
    out.append(n * alpha)
    total += np.maximum(np.asarray(losses) - reference, 0.0)
    if t % every == 0:
      raw = alpha * np.exp(step_size * total / every)
      alpha = (1 - smoothing) * raw / raw.sum() + smoothing / n
      total = np.zeros(n)
  return out, alpha


@pytest.mark.parametrize('every', [1, 3])
def test_doremi_follows_the_paper_s_update(every):
  reference = np.array([1.0, 2.0, 0.5])
  rng = np.random.default_rng(0)
  losses_seq = rng.uniform(0.0, 3.0, size=(7, 3))
  method = _get('doremi', reference=tuple(reference), step_size=0.5, smoothing=0.01,
                every=every)
  outs, state = _run_many(method, np.ones((3, 2)), losses_seq)
  expected, alpha = _doremi_numpy(losses_seq, reference, 0.5, 0.01, every)
  np.testing.assert_allclose(np.asarray(outs), expected, rtol=1e-5)
  np.testing.assert_allclose(state.rates, alpha, rtol=1e-5)
  assert float(state.rates.sum()) == pytest.approx(1.0)


def test_doremi_moves_weight_to_the_task_furthest_above_its_reference():
  method = _get('doremi', reference=(1.0, 1.0, 1.0))
  outs, _ = _run_many(method, np.ones((3, 2)), [[1.0, 0.5, 3.0]] * 5)
  assert outs[0] == pytest.approx([1.0, 1.0, 1.0])  # the first step's α is uniform
  assert outs[-1][2] > outs[-1][0] == pytest.approx(outs[-1][1])  # no excess for 0 and 1
  assert sum(outs[-1]) == pytest.approx(3.0)
  with pytest.raises(ValueError, match='reference has 2 losses for 3 tasks'):
    _init(_get('doremi', reference=(1.0, 1.0)), np.ones((3, 2)))
  with pytest.raises(ValueError, match='step_size > 0'):
    _get('doremi', step_size=0.0)


# ----------------------------------------------------------------------------- all

@pytest.mark.parametrize('name', ['uncertainty', 'dwa', 'rlw', 'famo', 'gradnorm', 'db_mtl',
                                  'doremi'])
def test_defaults_jit_and_absent_tasks_are_finite(name):
  method = weighting.get(name)
  grads = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
  state = _init(method, grads)
  jitted = jax.jit(method.update)
  for t in range(3):  # task 1 absent throughout
    info = step_info(method, grads, [0.5, 0.0, 2.0], present=[True, False, True], key=t, step=t)
    eager_out, eager_state = method.update(info, state)
    out, state = jitted(info, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), (out, state),
                 (eager_out, eager_state))
  if name != 'db_mtl':
    assert out[1] == 0 and np.all(out[jnp.array([0, 2])] > 0)
  # Nothing present at all: zeros, nothing NaN.
  info = step_info(method, np.zeros((3, 2)), np.zeros(3), present=[False] * 3)
  out, new_state = jitted(info, state)
  for leaf in jax.tree.leaves((out, new_state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  np.testing.assert_array_equal(jax.tree.leaves(out)[0], 0.0)
