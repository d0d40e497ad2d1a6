"""Per-task losses under masks, against scipy/numpy references; the joint objective."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.objectives.joint import joint_loss
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.step import make_predict_step

CLS = Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test')
REG = Task('reg', TaskKind.REGRESSION, 1, ('a',), 'reg', ('pearson',), 'test')
TAG = Task('tag', TaskKind.TAGGING, 4, ('a',), 'tag', ('token_accuracy',), 'test')
TASKS = (CLS, REG, TAG)


def _batch(seed=0, b=6, s=5):
  rng = np.random.default_rng(seed)
  outputs = {'cls': rng.normal(size=(b, 3)), 'reg': rng.normal(size=(b,)),
             'tag': rng.normal(size=(b, s, 4))}
  labels = {'cls': rng.integers(0, 3, b), 'reg': rng.normal(size=(b,)),
            'tag': rng.integers(0, 4, (b, s))}
  masks = {'cls': (rng.random(b) < 0.6).astype(np.float32),
           'reg': (rng.random(b) < 0.6).astype(np.float32),
           'tag': (rng.random((b, s)) < 0.5).astype(np.float32)}
  masks['cls'][0] = masks['reg'][0] = 1.0
  return outputs, labels, masks


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_losses_match_reference(seed):
  outputs, labels, masks = _batch(seed)
  losses, counts = loss_vector(TASKS, jax.tree.map(jnp.asarray, outputs),
                               jax.tree.map(jnp.asarray, labels), jax.tree.map(jnp.asarray, masks))
  nll = -np.take_along_axis(log_softmax(outputs['cls'], -1), labels['cls'][:, None], -1)[:, 0]
  m = masks['cls'] > 0
  expected_cls = nll[m].mean()
  m_reg = masks['reg'] > 0
  expected_reg = ((outputs['reg'] - labels['reg'])[m_reg] ** 2).mean()
  tag_nll = -np.take_along_axis(log_softmax(outputs['tag'], -1), labels['tag'][..., None], -1)[..., 0]
  expected_tag = tag_nll[masks['tag'] > 0].mean()
  np.testing.assert_allclose(losses, [expected_cls, expected_reg, expected_tag], rtol=1e-5)
  np.testing.assert_array_equal(counts, [m.sum(), m_reg.sum(), (masks['tag'] > 0).sum()])


def test_absent_task_contributes_zero_and_no_nan():
  outputs, labels, masks = _batch()
  masks['reg'][:] = 0.0
  outputs['reg'][1] = np.nan  # a garbage output on an unlabelled row must not leak
  labels['cls'][~(masks['cls'] > 0)] = 99  # out-of-range label where masked out
  args = [jax.tree.map(jnp.asarray, x) for x in (outputs, labels, masks)]
  losses, counts = loss_vector(TASKS, *args)
  assert losses[1] == 0.0 and counts[1] == 0.0
  assert np.isfinite(losses).all()

  def total(outs):
    return joint_loss(loss_vector(TASKS, outs, args[1], args[2])[0], jnp.array([1.0, 5.0, 2.0]))
  grads = jax.grad(total)(args[0])
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  np.testing.assert_array_equal(grads['reg'], 0.0)


def test_joint_loss_is_weighted_sum_plus_extra_terms():
  losses = jnp.array([0.5, 2.0, 1.0])
  weights = jnp.array([1.0, 0.25, 3.0])
  np.testing.assert_allclose(joint_loss(losses, weights), 0.5 + 0.5 + 3.0)
  # penalty 0.3, adversary λ_adv L_adv = 0.1 * 2.0
  np.testing.assert_allclose(joint_loss(losses, weights, 0.3 - 0.1 * 2.0), 4.0 + 0.1, rtol=1e-6)


def test_a_scaled_regression_task_is_trained_on_standardised_targets():
  """With target_scale (mean, std) the loss is the MSE against (y - mean) / std, and the
  prediction step maps the head's output back to the targets' units."""
  scaled = dataclasses.replace(REG, target_scale=(2.5, 1.6))
  outputs, labels, masks = _batch()
  args = [jax.tree.map(jnp.asarray, {'reg': x['reg']}) for x in (outputs, labels, masks)]
  losses, _ = loss_vector((scaled,), *args)
  m = masks['reg'] > 0
  expected = ((outputs['reg'] - (labels['reg'] - 2.5) / 1.6)[m] ** 2).mean()
  np.testing.assert_allclose(losses, [expected], rtol=1e-5)

  class Model:  # the predict step only calls apply; a stand-in model returns fixed outputs
    input_keys = INPUT_KEYS

    def apply(self, *args, **kwargs):
      return types.SimpleNamespace(tasks={'reg': jnp.asarray(outputs['reg'])})
  predict = make_predict_step(Model(), (scaled,))
  batch = {'input_ids': 0, 'segment_ids': 0, 'attention_mask': 0}
  np.testing.assert_allclose(predict(None, batch)['reg'], 2.5 + 1.6 * outputs['reg'], rtol=1e-6)
  with pytest.raises(ValueError, match='target_scale'):
    dataclasses.replace(CLS, target_scale=(0.0, 1.0))
