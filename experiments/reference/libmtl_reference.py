"""Reference numbers from LibMTL's weighting methods, for tests/test_weighting_libmtl.py.

Run OFFLINE, once, by a developer (never by the tests; the tests read the JSON this writes):

  PYTHONPATH=<dir holding LibMTL/> python experiments/reference/libmtl_reference.py \
      --out tests/data/libmtl_reference.json --libmtl-commit <LibMTL commit>

It needs torch, numpy, scipy, cvxpy (with ECOS) and LibMTL's `LibMTL/weighting/` package, in
an environment of its own; docs/libmtl_reference.md says exactly which LibMTL commit and
versions produced the stored JSON. Only the modules `LibMTL.weighting.<Name>` are imported,
never the package's architectures or trainer.

The harness is exact: a shared parameter vector θ ∈ R^P, at θ = 0, and the task losses
L_i(θ) = g_i·θ + c_i, so ∇L_i = g_i exactly and L_i = c_i. A small subclass of each LibMTL
weighting class supplies what `AbsWeighting` expects from LibMTL's model (get_share_params,
zero_grad_share_params, task_num, device, rep_grad, epoch, train_loss_buffer, rep and
rep_tasks for GradDrop); the script calls `backward(losses, **hyperparameters)` as LibMTL's
Trainer does and reads θ.grad (the update LibMTL hands its optimizer) and the returned
weights. IMTL, whose loss scale the Trainer's optimizer trains, is run for a few Trainer
steps (zero_grad, backward, Adam step over θ and the scale), so there θ moves. Where LibMTL
draws a random task order (PCGrad, GradVac) the script fixes the order through the
module's `random.shuffle` and records it; GradDrop's uniform draw is fixed the
same way (torch.rand_like) at its two extremes. For the solver-based methods (MGDA, CAGrad,
Nash-MTL) it also solves the same problem exactly in float64 and stores LibMTL's distance
from that solution, which sets the test tolerance.
"""

import argparse
import datetime
import importlib
import itertools
import json
import platform
import random as pyrandom
import sys

import numpy as np
import scipy
import scipy.optimize
import torch

P = 8  # parameters of θ in every case
DTYPE = torch.float32  # LibMTL's own precision

# ----------------------------------------------------------------------------- cases


def _cases():
  """name -> (G (N, P), losses c (N,)). Fixed by hand or by a fixed numpy seed."""
  cases = {}
  e = np.eye(P)
  cases['n2_orthogonal'] = (np.stack([1.0 * e[0], 2.0 * e[1]]), [0.7, 1.3])
  g = np.array([1.0, 0.5, -0.25, 0.0, 0.3, -0.1, 0.2, 0.4])
  cases['n2_opposite'] = (np.stack([g, -0.5 * g]), [0.7, 1.3])
  cases['n2_scaled'] = (np.stack([g, 3.0 * g]), [0.7, 1.3])
  g1 = np.array([1.0, 0.2, 0.0, -0.3, 0.5, 0.1, 0.0, 0.2])
  g2 = np.array([-0.8, 1.0, 0.3, 0.2, -0.4, 0.0, 0.1, -0.2])  # cosine < 0
  cases['n2_conflict'] = (np.stack([g1, 2.5 * g2]), [0.7, 1.3])
  rng = np.random.default_rng(0)
  g3 = rng.normal(size=(3, P)) * np.array([[1.0], [2.0], [0.5]])
  g3[2] -= 1.2 * g3[0] * (g3[0] @ g3[2] > 0)  # make task 2 conflict with task 0
  cases['n3_random'] = (g3, [0.7, 1.3, 2.1])
  rng = np.random.default_rng(1)
  g4 = rng.normal(size=(4, P)) * np.array([[1.0], [0.5], [2.0], [1.5]])
  cases['n4_random'] = (g4, [0.7, 1.3, 2.1, 0.4])
  out = {}
  for name, (G, c) in cases.items():
    G = np.asarray(G, np.float32).astype(np.float64)
    out[name] = (G, np.asarray(c, np.float64))
    gram = G @ G.T
    assert name in ('n2_orthogonal',) or (gram < 0).any() or name == 'n2_scaled', name
  return out


FULL_RANK = ('n2_orthogonal', 'n2_conflict', 'n3_random', 'n4_random')

# ----------------------------------------------------------------------------- harness


def libmtl_class(name):
  return getattr(importlib.import_module(f'LibMTL.weighting.{name}'), name)


def build(name, num_tasks, *, rep_grad=False, epochs=8):
  """A LibMTL weighting object on θ ∈ R^P, with what AbsWeighting expects of the model."""
  base = libmtl_class(name)

  class Harness(base):

    def __init__(self):
      super().__init__()
      self.theta = torch.nn.Parameter(torch.zeros(P, dtype=DTYPE))
      self.task_num = num_tasks
      self.task_name = [f't{i}' for i in range(num_tasks)]
      self.device = torch.device('cpu')
      self.rep_grad = rep_grad
      self.epoch = 0
      # Trainer: train_loss_buffer[:, e] = the mean training loss of epoch e.
      self.train_loss_buffer = np.zeros([num_tasks, epochs])
      self.init_param()

    def get_share_params(self):
      return [self.theta]

    def zero_grad_share_params(self):
      if self.theta.grad is not None:
        self.theta.grad.zero_()

  return Harness()


def libmtl_step(model, G, c, hparams):
  """One Trainer step: fresh losses at θ = 0, backward, read θ.grad. (direction, weights)."""
  if model.theta.grad is not None:
    model.theta.grad.zero_()
  Gt = torch.tensor(G, dtype=DTYPE)
  ct = torch.tensor(c, dtype=DTYPE)
  if model.rep_grad:
    # Representation of one example, rep = θ + 1 > 0 (GradDrop multiplies by sign(rep)).
    model.rep = model.theta.unsqueeze(0) + 1.0
    model.rep_tasks = {t: model.rep.detach().clone().requires_grad_(True)
                       for t in model.task_name}
    losses = torch.stack([(Gt[i] * (model.rep_tasks[t][0] - 1.0)).sum() + ct[i]
                          for i, t in enumerate(model.task_name)])
  else:
    losses = Gt @ model.theta + ct
  weights = model.backward(losses, **hparams)
  direction = model.theta.grad.detach().clone().double().numpy()
  return direction, (None if weights is None else np.asarray(weights, np.float64))


def coefficients(G, direction, case):
  """c with Σ c_i g_i = direction (unique when G has full row rank), else None."""
  if case not in FULL_RANK:
    return None
  c, *_ = np.linalg.lstsq(G.T, direction, rcond=None)
  return c


class FixedOrder:
  """Stands in for a LibMTL module's `random`: shuffle() applies the next given order."""

  def __init__(self, orders):
    self.orders = list(orders)

  def shuffle(self, items):
    order = self.orders.pop(0)
    assert sorted(order) == sorted(items), (order, items)
    items[:] = list(order)


def _l(x):
  return None if x is None else np.asarray(x, np.float64).tolist()


def record(records, *, libmtl, method, case, hparams, steps, compare='direction', rtol=1e-5,
           atol=1e-6, note='', **extra):
  records.append(dict(id=f'{libmtl}/{case}/' + ','.join(f'{k}={v}' for k, v in hparams.items()),
                      libmtl=libmtl, method=method, case=case, hparams=hparams,
                      compare=compare, rtol=rtol, atol=atol, note=note, steps=steps, **extra))


def step_entry(G, c, direction, weights, case, check=True, **extra):
  """One step; `check` False: recorded for information, the test does not compare it."""
  return dict(G=_l(G), losses=_l(c), direction=_l(direction), weights=_l(weights),
              check=bool(check),
              coefficients=_l(None if direction is None else coefficients(G, direction, case)),
              **{k: _l(v) if isinstance(v, np.ndarray) else v for k, v in extra.items()})


def single(records, libmtl, method, cases, hparams, **kw):
  for case, (G, c) in cases.items():
    model = build(libmtl, len(c))
    d, w = libmtl_step(model, G, c, hparams)
    if not np.all(np.isfinite(d)):
      records.append(dict(id=f'{libmtl}/{case}', libmtl=libmtl, method=method, case=case,
                          hparams=hparams, compare='skip',
                          note=f'LibMTL gives a non-finite update here: {d.tolist()}'))
      continue
    record(records, libmtl=libmtl, method=method, case=case, hparams=hparams,
           steps=[step_entry(G, c, d, w, case)], **kw)


def _imtl_well_posed(G, s):
  """LibMTL's IMTL solves (D Uᵀ) x = ... on the scaled gradients e^{s_i} g_i; D Uᵀ is
  singular when two unit gradients coincide (e.g. scaled copies), and its answer is noise."""
  Gs = np.exp(s)[:, None] * G
  u = Gs / np.linalg.norm(Gs, axis=1, keepdims=True)
  DU = (Gs[:1] - Gs[1:]) @ (u[:1] - u[1:]).T
  return bool(abs(np.linalg.det(DU)) > 1e-6 * np.abs(DU).max() ** len(DU) + 1e-12)


# ----------------------------------------------------------------------------- exact solvers


def mgda_exact(G):
  """min over the simplex of |Σ w_i g_i|², by enumerating supports (N <= 4), float64."""
  M = G @ G.T
  n = len(M)
  best = None
  for k in range(1, n + 1):
    for S in itertools.combinations(range(n), k):
      S = list(S)
      A = np.zeros((k + 1, k + 1))
      A[:k, :k] = M[np.ix_(S, S)]
      A[:k, k] = A[k, :k] = 1.0
      sol = np.linalg.lstsq(A, np.r_[np.zeros(k), 1.0], rcond=None)[0]
      w = np.zeros(n)
      w[S] = sol[:k]
      if (w < -1e-12).any():
        continue
      val = w @ M @ w
      if (M @ w >= val - 1e-9).all() and (best is None or val < best[0] - 1e-15):
        best = (val, w)
  return best[1]


def cagrad_exact(G, calpha, rescale):
  """LibMTL's CAGrad objective solved tightly in float64 (same formula, better solver)."""
  M = G @ G.T
  n = len(M)
  b = np.ones(n) / n
  cc = calpha * np.sqrt(M.mean() + 1e-8) + 1e-8
  obj = lambda x: x @ M @ b + cc * np.sqrt(x @ M @ x + 1e-8)
  best = None
  for x0 in [b] + list(np.eye(n) * 0.98 + 0.02 / n):
    r = scipy.optimize.minimize(obj, x0, bounds=[(0, 1)] * n, method='SLSQP',
                                constraints=[{'type': 'eq', 'fun': lambda x: 1 - x.sum()}],
                                options={'ftol': 1e-15, 'maxiter': 1000})
    if best is None or r.fun < best.fun:
      best = r
  gw = best.x @ G
  g = G.mean(0) + cc / (np.linalg.norm(gw) + 1e-8) * gw
  return g / {0: 1.0, 1: 1 + calpha**2, 2: 1 + calpha}[rescale]


def nash_exact(G):
  """α > 0 with α_i (GGᵀα)_i = 1, float64: the fixed point LibMTL's CCP converges to.

  LibMTL solves with G̃ = GGᵀ/‖GGᵀ‖_F but its constraint is α_i n (G̃α)_i >= 1 with
  n = ‖GGᵀ‖_F, so the α it returns is that of the raw Gram matrix.
  """
  M = G @ G.T
  n = len(M)
  r = scipy.optimize.least_squares(lambda a: M @ np.exp(a) - np.exp(-a), np.zeros(n),
                                   xtol=1e-15, ftol=1e-15, gtol=1e-15)
  return np.exp(r.x), np.abs(r.fun).max()


# ----------------------------------------------------------------------------- methods


def generate():
  cases = _cases()
  recs = []

  # --- EW: λ_i = 1 (a sum, not a mean).
  single(recs, 'EW', 'equal', cases, {})
  # --- GLS: gradient of (Π L_i)^(1/N) (LibMTL's *returned* weights are not the coefficients).
  single(recs, 'GLS', 'gls', cases, {}, note='LibMTL returns L_i/(N ΠL) as "weights"; '
         'only the direction (θ.grad) is the method.')

  # --- UW, first step: loss_scale s = -0.5, objective Σ L_i/(2e^s) + s/2.
  for case, (G, c) in cases.items():
    model = build('UW', len(c))
    d, w = libmtl_step(model, G, c, {})
    record(recs, libmtl='UW', method='uncertainty', case=case, hparams={},
           steps=[step_entry(G, c, d, w, case, param_grad=model.loss_scale.grad.double().numpy(),
                             param_value=model.loss_scale.detach().double().numpy())],
           note='first step only (LibMTL updates loss_scale with the model optimizer); '
           'param_grad is d(objective)/d(loss_scale) at loss_scale=-0.5')

  # --- DWA: Trainer with one batch per epoch, so the epoch means are the step losses.
  for T in (2.0, 1.0):
    for case, (G, c) in cases.items():
      n = len(c)
      rng = np.random.default_rng(7)
      history = [c * (1.0 + 0.5 * rng.random(n)), c * (1.0 + 0.2 * rng.random(n)), c]
      model = build('DWA', n)
      steps = []
      for e, le in enumerate(history):
        model.epoch = e
        d, w = libmtl_step(model, G, le, {'T': T})
        steps.append(step_entry(G, le, d, w, case))
        model.train_loss_buffer[:, e] = le
      record(recs, libmtl='DWA', method='dwa', case=case, hparams={'T': T}, steps=steps,
             note='one batch per epoch: LibMTL epoch e = step e; weights 1 for e < 2, then '
             'N softmax((L_{e-1}/L_{e-2})/T)')

  # --- GradNorm: epoch 0 is EW, from epoch 1 on GradNorm with L_i(0) = epoch-0 mean loss.
  for case, (G, c) in cases.items():
    n = len(c)
    model = build('GradNorm', n)
    steps = []
    for e, le in enumerate([c, 0.8 * c * np.linspace(0.7, 1.2, n)]):
      model.epoch = e
      if model.loss_scale.grad is not None:
        model.loss_scale.grad.zero_()
      d, w = libmtl_step(model, G, le, {'alpha': 1.5})
      lsg = None if model.loss_scale.grad is None else model.loss_scale.grad.double().numpy()
      # Step 1 is LibMTL's first GradNorm step, but its weights are still 1 only because
      # LibMTL leaves the update of loss_scale to the model's optimizer (after this step).
      steps.append(step_entry(G, le, d, w, case, param_grad=lsg, check=e == 0))
      model.train_loss_buffer[:, e] = le
    record(recs, libmtl='GradNorm', method='gradnorm', case=case, hparams={'alpha': 1.5},
           steps=steps, note='weights stay 1 until an optimizer moves loss_scale; step 1 '
           'param_grad = d(Σ|G_i - Ḡ r_i^α|)/d(loss_scale), λ = N softmax(loss_scale)')

  # --- MGDA, each normalisation.
  for gn in ('none', 'l2', 'loss', 'loss+'):
    for case, (G, c) in cases.items():
      model = build('MGDA', len(c))
      d, w = libmtl_step(model, G, c, {'mgda_gn': gn})
      norms = np.linalg.norm(G, axis=1)
      scale = {'none': np.ones_like(c), 'l2': norms, 'loss': c, 'loss+': c * norms}[gn]
      Gn = G / scale[:, None]
      exact = mgda_exact(Gn) @ Gn
      err = np.abs(d - exact).max()
      record(recs, libmtl='MGDA', method='mgda', case=case, hparams={'mgda_gn': gn},
             steps=[step_entry(G, c, d, w, case, exact_direction=exact)],
             atol=max(1e-5, 2 * err), rtol=1e-5,
             note='weights are on the normalised g_i/gn_i; atol = 2×LibMTL\'s distance from '
             f'the exact min-norm point ({err:.2e})')

  # --- CAGrad.
  for calpha, rescale in ((0.5, 1), (0.5, 0), (0.2, 2), (0.9, 1)):
    for case, (G, c) in cases.items():
      model = build('CAGrad', len(c))
      d, w = libmtl_step(model, G, c, {'calpha': calpha, 'rescale': rescale})
      exact = cagrad_exact(G, calpha, rescale)
      err = np.abs(d - exact).max()
      record(recs, libmtl='CAGrad', method='cagrad', case=case,
             hparams={'calpha': calpha, 'rescale': rescale},
             steps=[step_entry(G, c, d, w, case, exact_direction=exact)],
             atol=max(1e-5, 2 * err), rtol=1e-4,
             note=f'SLSQP solution; atol = 2×its distance from a tight solve ({err:.2e})')

  # --- IMTL: IMTL-L's loss_scale s is an nn.Parameter of the model, so the Trainer's
  # optimizer (over model.parameters(): θ and s) trains it. A few Trainer steps: zero_grad,
  # backward (IMTL-G on the gradients of e^s L - s), optimizer.step; θ moves, so each
  # step's losses are G θ + c at the current θ.
  for opt in ({'lr': 1e-4, 'weight_decay': 1e-5}, {'lr': 0.05, 'weight_decay': 0.1}):
    for case, (G, c) in cases.items():
      model = build('IMTL', len(c))
      optimizer = torch.optim.Adam(model.parameters(), **opt)
      steps = []
      for _ in range(4):
        optimizer.zero_grad(set_to_none=False)
        s = model.loss_scale.detach().double().numpy()
        losses = (torch.tensor(G, dtype=DTYPE) @ model.theta + torch.tensor(c, dtype=DTYPE)
                  ).detach().double().numpy()  # what libmtl_step computes
        d, w = libmtl_step(model, G, c, {})
        if not np.all(np.isfinite(d)):
          break
        steps.append(step_entry(G, losses, d, w, case, check=_imtl_well_posed(G, s),
                                loss_scale=s,
                                param_grad=model.loss_scale.grad.double().numpy()))
        optimizer.step()
        steps[-1]['loss_scale_after'] = _l(model.loss_scale.detach().double().numpy())
      if len(steps) < 4:
        recs.append(dict(id=f'IMTL/{case}/' + ','.join(f'{k}={v}' for k, v in opt.items()),
                         libmtl='IMTL', method='imtl', case=case, hparams=opt, compare='skip',
                         note='LibMTL gives a non-finite update here'))
        continue
      record(recs, libmtl='IMTL', method='imtl', case=case, hparams=opt, steps=steps,
             rtol=1e-4, atol=1e-5,
             note='4 Trainer steps with torch Adam(lr, weight_decay) over θ and loss_scale s '
             '(s = 0 at first); IMTL-G runs on e^{s_i} g_i, direction = Σ α_i e^{s_i} g_i; '
             'loss_scale = s before the step, param_grad = e^s L - 1 (per-task backward '
             'passes), loss_scale_after = s after optimizer.step(); a step whose scaled unit '
             'gradients coincide (D Uᵀ singular: LibMTL\'s answer is noise) has check false')

  # --- Nash-MTL (ECOS, optim_niter iterations of the CCP), with and without clipping.
  for hp in ({'update_weights_every': 1, 'optim_niter': 20, 'max_norm': 1.0},
             {'update_weights_every': 1, 'optim_niter': 20, 'max_norm': 0.0}):
    for case, (G, c) in cases.items():
      model = build('Nash_MTL', len(c))
      d, w = libmtl_step(model, G, c, hp)
      alpha, resid = nash_exact(G)
      unclipped = w @ G
      note = ('α solves α_i (GGᵀα)_i = 1 (LibMTL normalises GGᵀ by its Frobenius norm inside '
              'the solver and undoes it in the constraint) and multiplies the raw g_i; '
              'max_norm > 0 clips ‖θ.grad‖ to max_norm (torch clip_grad_norm_, eps 1e-6)')
      if resid < 1e-8:
        exact = alpha @ G
        if hp['max_norm'] > 0:
          exact = exact * min(1.0, hp['max_norm'] / (np.linalg.norm(exact) + 1e-6))
        err = np.abs(d - exact).max()
        note += f'; atol = 2×LibMTL\'s distance from the exact α ({err:.2e})'
      else:
        exact, alpha = None, None
        err = 0.0
        note += ('; NO positive solution exists here (some (GGᵀα)_i <= 0): ECOS fails and '
                 'LibMTL keeps its previous α (ones at the first step). Degenerate case, '
                 'recorded for information, not compared')
      record(recs, libmtl='Nash_MTL', method='nash_mtl', case=case, hparams=hp,
             steps=[step_entry(G, c, d, w, case, unclipped_direction=unclipped,
                               exact_alpha=alpha, exact_direction=exact,
                               check=resid < 1e-8)],
             atol=max(1e-4, 2 * err), rtol=1e-3, note=note)

  # --- Aligned-MTL.
  # LibMTL calls torch.symeig, which torch >= 1.9 turned into an error; for a symmetric M,
  # torch.linalg.eigh returns the same (ascending eigenvalues, eigenvectors) pair.
  torch.symeig = lambda M, eigenvectors=True: torch.linalg.eigh(M)
  single(recs, 'Aligned_MTL', 'aligned_mtl', cases, {}, rtol=1e-4, atol=1e-5,
         note='α = Σ_rows √λ_min V Λ^{-1/2} Vᵀ over the eigenpairs of GGᵀ above tol')

  # --- DB-MTL: two steps (the EMA buffer starts at 0).
  for hp in ({'DB_beta': 0.9, 'DB_beta_sigma': 0.0}, {'DB_beta': 0.5, 'DB_beta_sigma': 0.5}):
    for case, (G, c) in cases.items():
      n = len(c)
      model = build('DB_MTL', n)
      rng = np.random.default_rng(3)
      G2 = G + 0.3 * rng.normal(size=G.shape)
      c2 = c * 0.9
      steps = []
      for Gs, cs in ((G, c), (G2, c2)):
        d, w = libmtl_step(model, Gs, cs, hp)
        steps.append(step_entry(Gs, cs, d, None, case))
      record(recs, libmtl='DB_MTL', method='db_mtl', case=case, hparams=hp, steps=steps,
             rtol=1e-4, atol=1e-6,
             note='gradients of log(L_i + 1e-8) (= g_i/c_i here); buffer_t = ĝ + β/t^σ '
             '(buffer_{t-1} - ĝ) from 0, no bias correction; update Σ (max_j‖b_j‖/‖b_i‖) b_i')

  # --- FAMO: backward(L1), update_w(L2), backward(L2), update_w(L3), backward(L3).
  for hp in ({'FAMO_w_lr': 0.025, 'FAMO_w_gamma': 1e-3}, {'FAMO_w_lr': 0.5, 'FAMO_w_gamma': 0.0}):
    for case, (G, c) in cases.items():
      n = len(c)
      model = build('FAMO', n)
      seq = [c, c * np.linspace(0.6, 0.9, n), c * np.linspace(0.5, 0.6, n)[::-1]]
      steps = []
      for t, ct in enumerate(seq):
        if t > 0:
          model.update_w(torch.tensor(ct, dtype=DTYPE))
        d, w = libmtl_step(model, G, ct, hp)
        steps.append(step_entry(G, ct, d, None, case,
                                logits=model.w.detach().double().numpy()))
      record(recs, libmtl='FAMO', method='famo', case=case, hparams=hp, steps=steps,
             rtol=1e-4, atol=1e-6,
             note='LibMTL calls update_w(L_after) after the optimizer step, on the same batch '
             '(an extra forward); here L_after is the NEXT step\'s losses, the protocol of a '
             'method that updates its logits at the start of the next step')

  # --- PCGrad: every combination of per-task orders (N <= 3), else a few fixed ones.
  for case, (G, c) in cases.items():
    n = len(c)
    # LibMTL shuffles all N tasks for each i; where i itself falls changes nothing (a
    # gradient never conflicts with itself), so i first + every order of the others covers
    # every distinct outcome: ((N-1)!)^N combinations.
    per_task = [[(i,) + o for o in itertools.permutations([j for j in range(n) if j != i])]
                for i in range(n)]
    combos = list(itertools.product(*per_task))
    module = importlib.import_module('LibMTL.weighting.PCGrad')
    results = {}
    for combo in combos:
      module.random = FixedOrder(combo)
      d, w = libmtl_step(build('PCGrad', n), G, c, {})
      results[json.dumps([list(o) for o in combo])] = d
    module.random = pyrandom
    distinct, first_orders = _distinct(results)
    record(recs, libmtl='PCGrad', method='pcgrad', case=case, hparams={},
           compare='direction' if len(distinct) == 1 else 'direction_set',
           steps=[step_entry(G, c, distinct[0] if len(distinct) == 1 else None, None, case,
                             candidates=[d.tolist() for d in distinct],
                             candidate_orders=first_orders)],
           all_orders=True, num_order_combinations=len(combos),
           note='every combination of per-task orders (LibMTL shuffles the order for each '
           f'task i); {len(combos)} combinations, {len(distinct)} distinct directions; '
           'candidate_orders[k] = one order combination giving candidates[k]')

  # --- GradVac: first step per order (rho_T = 0), two steps for N = 2.
  module = importlib.import_module('LibMTL.weighting.GradVac')
  for beta in (0.5, 0.1):
    hp = {'GradVac_beta': beta, 'GradVac_group_type': 0}
    for case, (G, c) in cases.items():
      n = len(c)
      rng = np.random.default_rng(5)
      G2 = G + 0.5 * rng.normal(size=G.shape)
      if n == 2:
        model = build('GradVac', n)
        steps = []
        for Gs in (G, G2):
          module.random = FixedOrder([[1], [0]])
          d, _ = libmtl_step(model, Gs, c, hp)
          steps.append(step_entry(Gs, c, d, None, case, rho_T=model.rho_T[..., 0].double().numpy()))
        module.random = pyrandom
        record(recs, libmtl='GradVac', method='gradvac', case=case, hparams=hp, steps=steps,
               rtol=1e-4, atol=1e-6, note='two steps; the EMA targets rho_T start at 0')
      else:
        others = [[j for j in range(n) if j != i] for i in range(n)]
        combos = list(itertools.product(*[list(itertools.permutations(o)) for o in others]))
        results = {}
        for combo in combos:
          module.random = FixedOrder(combo)
          d, _ = libmtl_step(build('GradVac', n), G, c, hp)
          results[json.dumps([list(o) for o in combo])] = d
        module.random = pyrandom
        distinct, first_orders = _distinct(results)
        record(recs, libmtl='GradVac', method='gradvac', case=case, hparams=hp,
               compare='direction' if len(distinct) == 1 else 'direction_set', rtol=1e-4,
               atol=1e-6, all_orders=True, num_order_combinations=len(combos),
               steps=[step_entry(G, c, distinct[0] if len(distinct) == 1 else None, None, case,
                                 candidates=[d.tolist() for d in distinct],
                                 candidate_orders=first_orders)],
               note=f'first step (rho_T = 0), every one of the {len(combos)} combinations of '
               f'per-task orders; {len(distinct)} distinct directions')

  # --- GradDrop (representation gradients, one example, rep > 0): the two extremes of U.
  for leak in (0.0, 0.3):
    for case, (G, c) in cases.items():
      n = len(c)
      outs = {}
      for name, u in (('u_low', 1e-12), ('u_high', 1.0 - 1e-7)):
        orig = torch.rand_like
        torch.rand_like = lambda x, u=u: torch.full_like(x, u)
        try:
          d, _ = libmtl_step(build('GradDrop', n, rep_grad=True), G, c, {'leak': leak})
        finally:
          torch.rand_like = orig
        outs[name] = d
      Gt = G.astype(np.float32)
      prob = 0.5 * (1 + Gt.sum(0) / (np.abs(Gt).sum(0) + 1e-7))
      record(recs, libmtl='GradDrop', method='graddrop', case=case, hparams={'leak': leak},
             compare='per_coordinate_choice', rtol=1e-5, atol=1e-6,
             steps=[step_entry(G, c, None, None, case, keep_positive=outs['u_low'],
                               keep_negative=outs['u_high'], positive_probability=prob)],
             note='per coordinate k the update is keep_positive[k] with probability '
             'positive_probability[k], else keep_negative[k] (LibMTL draws U ~ U(0,1) per '
             'coordinate; these are its results with U → 0 and U → 1)')

  # --- RLW: λ = softmax(z), z ~ N(0, I): moments of LibMTL's draws.
  for n in (2, 3, 4):
    torch.manual_seed(0)
    model = build('RLW', n)
    draws = []
    G = np.eye(n, P)
    for _ in range(20000):
      _, w = libmtl_step(model, G, np.ones(n), {})
      draws.append(w)
    draws = np.asarray(draws)
    recs.append(dict(id=f'RLW/n{n}', libmtl='RLW', method='rlw', case=f'n{n}', hparams={},
                     compare='weight_moments', mean=draws.mean(0).tolist(),
                     std=draws.std(0).tolist(), sum_min=float(draws.sum(1).min()),
                     sum_max=float(draws.sum(1).max()), min=float(draws.min()),
                     num_draws=len(draws),
                     note='20000 draws of LibMTL RLW (torch seed 0); λ sums to 1, λ > 0'))
  return recs


def _distinct(results, tol=1e-5):
  """The distinct directions among {orders: direction}, and one orders key for each."""
  out, keys = [], []
  for key, d in results.items():
    if not any(np.abs(d - o).max() <= tol * (1 + np.abs(o).max()) for o in out):
      out.append(d)
      keys.append(json.loads(key))
  return out, keys


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default='tests/data/libmtl_reference.json')
  ap.add_argument('--libmtl-commit', default='unknown',
                  help='the LibMTL git commit whose LibMTL/weighting/ is on PYTHONPATH')
  args = ap.parse_args()
  torch.set_num_threads(1)
  pyrandom.seed(0)
  records = generate()
  import cvxpy
  meta = dict(
      generated=datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
      command='PYTHONPATH=<dir holding LibMTL/> python experiments/reference/libmtl_reference.py'
      ' --out tests/data/libmtl_reference.json --libmtl-commit <commit>',
      python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
      scipy=scipy.__version__, cvxpy=cvxpy.__version__,
      libmtl_source=importlib.import_module('LibMTL.weighting.abstract_weighting').__file__,
      libmtl_commit=args.libmtl_commit,
      dtype=str(DTYPE), P=P,
      harness='L_i(θ) = g_i·θ + c_i at θ = 0 (IMTL: θ as moved by the Trainer\'s Adam); '
      'direction = θ.grad after backward()',
      see='docs/libmtl_reference.md')
  with open(args.out, 'w') as f:
    # One record per line: compact, and a regenerated file diffs record by record.
    f.write('{"meta": ' + json.dumps(meta, indent=1) + ',\n "records": [\n')
    f.write(',\n'.join(json.dumps(r, separators=(',', ':')) for r in records))
    f.write('\n]}\n')
  print(f'{len(records)} records -> {args.out}', file=sys.stderr)


if __name__ == '__main__':
  main()
