"""The adversarial term and the architecture penalty in the train step.

Truths: the gradient reversal layer's definition; the Ganin & Lempitsky ramp; the step's
update against one written here with separate jax.grad calls (a second implementation of
Σ L_i + penalty − λ_adv L_adv, for both optimisations and both adversary losses); λ_adv = 0
against plain MTL; and a toy where the task is linearly decodable from the features.
"""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import build_step
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import train_batches
from mtl_jax.models.encoder import EncoderConfig
from mtl_jax.models.multitask import HardSharing
from mtl_jax.objectives import adversarial
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train import gradients
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward, apply_model
from mtl_jax.train.loop import create_state
from mtl_jax.train.step import make_train_step

LEARNING_RATE = 0.5  # SGD everywhere: a parameter's change is -lr × its gradient
ADVERSARY_WEIGHT = 0.7


def test_reverse_gradient_is_identity_forward_and_negated_scaled_backward():
  x = jnp.array([0.3, -1.2, 2.0])
  f = lambda y: jnp.sum(jnp.sin(y) * y)
  np.testing.assert_array_equal(adversarial.reverse_gradient(x, 0.4), x)
  reversed_grad = jax.grad(lambda y: f(adversarial.reverse_gradient(y, 0.4)))(x)
  np.testing.assert_allclose(reversed_grad, -0.4 * jax.grad(f)(x), rtol=1e-6)


def test_ganin_ramp():
  weight = lambda step: float(adversarial.adversary_weight(step, 100, 0.5, 'ganin', 10.0))
  assert weight(0) == 0.0
  for step in (10, 50, 100):
    p = step / 100
    np.testing.assert_allclose(weight(step), 0.5 * (2 / (1 + np.exp(-10 * p)) - 1), rtol=1e-6)
  assert float(adversarial.adversary_weight(37, 100, 0.5, 'constant')) == 0.5


def test_domain_and_uniform_losses():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  mask = jnp.array([1.0, 1.0])
  domains = jnp.array([2, 0])
  np.testing.assert_allclose(adversarial.domain_loss(logits, domains, mask),
                             -(log_p[0, 2] + log_p[1, 0]) / 2, rtol=1e-6)
  np.testing.assert_allclose(adversarial.uniform_loss(logits, mask), -log_p.mean(), rtol=1e-6)
  # Uniform logits are the entropy variant's optimum: CE(uniform, uniform) = log K.
  np.testing.assert_allclose(adversarial.uniform_loss(jnp.zeros((4, 3)), jnp.ones(4)),
                             np.log(3), rtol=1e-6)


@pytest.fixture
def config(exact_config):
  exact_config.adversary.enabled = True
  exact_config.adversary.weight = ADVERSARY_WEIGHT
  exact_config.adversary.hidden = 8
  return exact_config


def _expected_step(model, tasks, theta, phi, batch, adversary: adversarial.Adversary):
  """One SGD step of Σ L_i + penalty − λ_adv L_adv (or + λ_adv CE(uniform, D)), each part
  from its own jax.grad call; alternating updates the discriminator first. (the model's
  new parameters, the discriminator's) from the model's `theta` and D's `phi`."""
  lam = ADVERSARY_WEIGHT

  def outputs(t):
    return apply_model(model, t, batch)

  def logits(t, phi):
    return adversary.logits(phi, outputs(t).shared)

  def task_objective(t):
    out = outputs(t)
    penalty = model.statistics_penalty(out.statistics) if model.has_statistics else 0.0
    return loss_vector(tasks, out.tasks, batch['labels'], batch['label_masks'])[0].sum() + (
        out.penalty + penalty)

  def domain_ce(t, phi):
    log_p = jax.nn.log_softmax(logits(t, phi))
    return -jnp.take_along_axis(log_p, batch['domain'][:, None], -1).mean()

  def confusion(t, phi):
    return -jax.nn.log_softmax(logits(t, phi)).mean()

  sgd = lambda p, g: jax.tree.map(lambda x, d: x - LEARNING_RATE * d, p, g)
  if adversary.optimization == 'alternating':
    phi = sgd(phi, jax.grad(domain_ce, 1)(theta, phi))
  adv = domain_ce if adversary.loss == 'reverse' else confusion
  sign = -1.0 if adversary.loss == 'reverse' else 1.0
  theta_grad = jax.tree.map(lambda a, b: a + sign * lam * b, jax.grad(task_objective)(theta),
                            jax.grad(adv)(theta, phi))
  if adversary.optimization == 'reversal':
    phi = sgd(phi, jax.grad(domain_ce, 1)(theta, phi))
  return sgd(theta, theta_grad), phi


def _run_step(config, method=None, mode='params', diagnostics=False):
  tasks, data, state, model, step = build_step(config, method, mode, diagnostics,
                                               sgd_learning_rate=LEARNING_RATE)
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  new_state, metrics = jax.jit(step)(state, batch)
  adversary = config_lib.build_terms(config, len(data.train_names))[adversarial.NAME]
  return new_state, metrics, (tasks, model, state, batch, adversary)


def _trained(state):
  """The model's and the discriminator's parameters."""
  return state.params, state.terms[adversarial.NAME].params


def _assert_moved_by(actual, expected, initial):
  moved = max(float(np.abs(np.asarray(x) - np.asarray(p)).max())
              for x, p in zip(jax.tree.leaves(actual), jax.tree.leaves(initial)))
  assert moved > 1e-3, 'the step did not move the parameters: the comparison is vacuous'
  jax.tree.map(lambda x, y, p: np.testing.assert_allclose(x - p, y - p, rtol=2e-3, atol=3e-6),
               actual, expected, initial)


@pytest.mark.integration
# Every pair of the three factors' values once (a pairwise design: 4 steps, not 8).
@pytest.mark.parametrize('architecture,optimization,loss', [
    ('hard', 'reversal', 'reverse'), ('hard', 'alternating', 'entropy'),
    ('shared_private', 'reversal', 'entropy'), ('shared_private', 'alternating', 'reverse')])
def test_step_matches_separately_computed_adversarial_update(config, architecture,
                                                             optimization, loss):
  config.model.architecture = architecture
  config.adversary.optimization, config.adversary.loss = optimization, loss
  new_state, metrics, (tasks, model, state, batch, adversary) = _run_step(config)
  expected = _expected_step(model, tasks, *_trained(state), batch, adversary)
  _assert_moved_by(_trained(new_state), expected, _trained(state))
  assert 0.0 <= float(metrics['adversary_accuracy']) <= 1.0
  if architecture == 'shared_private':
    assert float(metrics['penalty']) > 0


@pytest.mark.integration
@pytest.mark.parametrize('mode,strategy', [('params', 'proportional'),
                                           ('representation', 'proportional'),
                                           ('params', 'grouped')])
def test_per_task_routes_add_the_penalty_and_adversary_gradients(config, mode, strategy):
  """Per-task gradients (diagnostics on) summed + the extra terms' gradient == the one
  backward pass of a loss weighter, for shared-private with the adversary."""
  config.model.architecture = 'shared_private'
  config.sampling.strategy = strategy
  reference, ref_metrics, (*_, state, _, _) = _run_step(config)
  new_state, metrics, _ = _run_step(config, weighting.get('equal'), mode, diagnostics=True)
  _assert_moved_by(_trained(new_state), _trained(reference), _trained(state))
  for key in ('loss', 'penalty', 'adversary_loss'):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)


@pytest.mark.integration
def test_zero_adversary_weight_is_plain_mtl(smoke_config):
  smoke_config.num_steps = 3

  def run(enabled):
    smoke_config.adversary.enabled = enabled
    smoke_config.adversary.weight = 0.0
    _, data, state, _, step = build_step(smoke_config)
    step = jax.jit(step)
    for batch in train_batches(data, smoke_config.sampling, 0, smoke_config.batch_size, 0, 3):
      state, metrics = step(state, batch)
    return state, metrics

  plain, plain_metrics = run(False)
  adv, adv_metrics = run(True)
  assert set(adv.params) == set(plain.params) and set(adv.terms) == {adversarial.NAME}
  assert not plain.terms
  chex.assert_trees_all_close(adv.params, plain.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv_metrics['task_losses'], plain_metrics['task_losses'],
                             rtol=1e-5)


# A toy where the task (the dataset a row comes from) is linearly decodable: dataset 0 draws
# its tokens from ids 4..19, dataset 1 from 20..35, and each row's segment id is its dataset
# (a constant shift of every token's embedding). Each dataset's task asks whether its own
# marker token occurs.
TOY_LEN, TOY_BATCH = 12, 32


def _toy_batch(rng):
  domain = rng.integers(0, 2, TOY_BATCH)
  ids = np.where(domain[:, None] == 0, rng.integers(4, 20, (TOY_BATCH, TOY_LEN)),
                 rng.integers(20, 36, (TOY_BATCH, TOY_LEN)))
  ids[:, 0] = 1  # [CLS]
  label = (ids == np.where(domain == 0, 7, 30)[:, None]).any(1).astype(np.int32)
  labels = {'a': label, 'b': label}
  masks = {'a': (domain == 0).astype(np.float32), 'b': (domain == 1).astype(np.float32)}
  segments = np.broadcast_to(domain[:, None], ids.shape).astype(np.int32)
  return {'input_ids': ids.astype(np.int32), 'segment_ids': segments,
          'attention_mask': np.ones_like(ids, np.int32), 'labels': labels,
          'label_masks': masks, 'domain': domain.astype(np.int32)}


TOY_SEEDS = (0, 1, 2, 3, 4)  # model init and data
TOY_STEPS = 450
TOY_WEIGHT = 0.3  # λ_adv's final value under the Ganin ramp


def _train_toy(loss: str, optimization: str, weights, seeds=TOY_SEEDS,
               num_steps: int = TOY_STEPS):
  """Trains the toy for every (λ_adv, seed) pair, all in one vmapped train step (one compile,
  one loop). λ_adv ramps to its final value with the Ganin schedule. The runs of one seed
  share their initialisation and batches, so the weights' runs are paired.

  Returns arrays indexed [weight, seed]: D's accuracy (mean over the last 50 steps), and the
  task losses (…, 2) over the first 10 steps and over the last 50.
  """
  tasks = tuple(Task(n, TaskKind.CLASSIFICATION, 2, ('x',), n, ('accuracy',), 'toy')
                for n in ('a', 'b'))
  model = HardSharing(EncoderConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2,
                                    intermediate_size=64, max_len=TOY_LEN, dropout_rate=0.0,
                                    attention_dropout_rate=0.0, pooler=False),
                      tasks, head_dropout_rate=0.0, shared_features=True)
  optimizer = optax.adam(3e-3)
  method = weighting.get('equal')

  def adversary(weight):
    return adversarial.Adversary(
        loss, optimization,
        lambda step: adversarial.adversary_weight(step, num_steps, weight, 'ganin'),
        optax.adam(1e-2), num_domains=2, hidden=32)

  def train_step(state, batch, weight):  # the weight is traced: one step for all runs
    forward = Forward(model, tuple(tasks), {adversarial.NAME: adversary(weight)}, Collectives())
    return make_train_step(forward, gradients.loss_weighted, method, optimizer,
                           lambda s: 3e-3)(state, batch)

  runs = [(w, s) for w in weights for s in seeds]
  state = jax.tree.map(lambda *x: jnp.stack(x), *[
      create_state(model, optimizer, method, 2, s, TOY_LEN,
                   terms={adversarial.NAME: adversary(w)}) for w, s in runs])
  run_weights = jnp.asarray([w for w, _ in runs], jnp.float32)
  step = jax.jit(jax.vmap(train_step))
  rngs = {s: np.random.default_rng(s) for s in seeds}
  history = []
  for _ in range(num_steps):
    batches = {s: _toy_batch(rng) for s, rng in rngs.items()}
    batch = jax.tree.map(lambda *x: np.stack(x), *[batches[s] for _, s in runs])
    state, metrics = step(state, batch, run_weights)
    history.append(jax.device_get({k: metrics[k] for k in ('adversary_accuracy',
                                                            'task_losses')}))
  shape = (len(weights), len(seeds))
  tail = history[-50:]
  accuracy = np.mean([m['adversary_accuracy'] for m in tail], 0).reshape(shape)
  first = np.mean([m['task_losses'] for m in history[:10]], 0).reshape(shape + (2,))
  last = np.mean([m['task_losses'] for m in tail], 0).reshape(shape + (2,))
  return accuracy, first, last


@pytest.mark.integration
# Seeds and instruction sets change these runs' outcomes (CPUs round differently and the
# min-max amplifies it), so the test asserts over seeds 0..4 by the median, not one run's
# figure. This test's runs with XLA's AVX2, AVX and SSE4.2 code: unattacked, D 1.0 in every
# run; attacked, D 0.49..0.54 per run, medians 0.51..0.54; the worse task's loss fell
# 7.6× or more per run, median ≥ 80× (mostly ~1000×). Seeds 0..15 (32 runs in one vmap,
# so other roundings): attacked D 0.46..0.60 except 2 runs of 96 ('reverse', 0.73 and 0.65);
# a run may give up a task, its loss staying near log 2 (seed 9 of 'reverse' on each
# instruction set; also seed 13 unattacked, on AVX2: the toy has that plateau without an
# adversary). A constant λ_adv of 0.3 from step 0 over 300 steps (this test before) gave
# up a task in 4 of seeds 0..4 with 'reverse', D up to 0.75: what D scores reading only the
# surviving task's marker rows (issue 17 saw 0.7525). The Ganin ramp lets the tasks
# learn before the attack.
@pytest.mark.parametrize('loss,optimization', [('reverse', 'alternating'),
                                               ('entropy', 'reversal')])
def test_adversary_drives_the_discriminator_to_chance_while_tasks_learn(loss, optimization,
                                                                        xla_optimised):
  # xla_optimised: one program run 450 times (both toys: 51 -> 39 s of CPU).
  accuracy, first, last = _train_toy(loss, optimization, (0.0, TOY_WEIGHT))
  plain, attacked = accuracy
  assert plain.min() > 0.95, plain  # every seed: the dataset is decodable, unattacked
  assert np.median(attacked) < 0.6, attacked  # two datasets: chance is 0.5
  worst_task = (last / first).max(-1)[1]  # per attacked run, its worse task's fall
  assert np.median(worst_task) < 0.1, worst_task
