"""bfloat16 compute with float32 parameters, and per-layer rematerialisation.

Truths: rematerialisation changes what is stored, not what is computed, so losses and
gradients equal the plain model's; bfloat16 compute stays close to float32 (to bfloat16's
~3 significant digits) while the parameters and their updates stay float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax.models.encoder import Encoder, EncoderConfig
from mtl_jax.models.multitask import HardSharing
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import Task, TaskKind

CFG = EncoderConfig(vocab_size=60, hidden_size=32, num_layers=3, num_heads=4,
                    intermediate_size=64, max_len=16)
TASKS = (Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test'),
         Task('tag', TaskKind.TAGGING, 5, ('a',), 'tag', ('token_accuracy',), 'test'))


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 60, (4, 16)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[:, 12:] = 0
  labels = {'cls': rng.integers(0, 3, 4).astype(np.int32),
            'tag': rng.integers(0, 5, (4, 16)).astype(np.int32)}
  masks = {'cls': np.ones(4, np.float32), 'tag': mask.astype(np.float32)}
  return ids, np.zeros_like(ids), mask, labels, masks


def _loss_and_grads(cfg, params=None, dropout=False):
  ids, seg, mask, labels, masks = _batch()
  model = HardSharing(cfg, TASKS)
  params = params or jax.tree.map(
      lambda x: x, model.init(jax.random.key(0), ids, seg, mask)['params'])

  def loss(p):
    rngs = {'dropout': jax.random.key(1)} if dropout else None
    out = model.apply({'params': p}, ids, seg, mask, deterministic=not dropout, rngs=rngs)
    return loss_vector(TASKS, out.tasks, labels, masks)[0].sum()

  return params, *jax.value_and_grad(loss)(params)


@pytest.mark.integration
@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_computes_the_same_loss_and_gradients(remat):
  params, loss, grads = _loss_and_grads(CFG, dropout=True)
  _, remat_loss, remat_grads = _loss_and_grads(dataclasses.replace(CFG, remat=remat), params,
                                               dropout=True)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               remat_grads, grads)


@pytest.mark.integration
def test_remat_recomputes_in_the_backward_pass():
  """The compiled gradient of the rematerialised encoder holds the layers' forward ops
  twice: once in the forward pass and once recomputed for the backward pass."""
  ids, seg, mask, *_ = _batch()

  def erf_count(cfg):
    model = Encoder(cfg)
    params = model.init(jax.random.key(0), ids, seg, mask)['params']
    grad = jax.grad(lambda p: model.apply({'params': p}, ids, seg, mask).hidden_states[-1]
                    .sum())
    return str(jax.jit(grad).lower(params).as_text()).count('erf')

  assert erf_count(dataclasses.replace(CFG, remat='full')) > erf_count(
      CFG)


@pytest.mark.integration
def test_bfloat16_compute_keeps_float32_parameters_and_stays_close():
  params, loss, grads = _loss_and_grads(CFG)
  bf16 = dataclasses.replace(CFG, dtype='bfloat16')
  ids, seg, mask, *_ = _batch()
  hidden = Encoder(bf16).apply({'params': params['encoder']}, ids, seg, mask).hidden_states
  assert all(h.dtype == jnp.bfloat16 for h in hidden)
  bf16_params = HardSharing(bf16, TASKS).init(jax.random.key(0), ids, seg, mask)['params']
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16_params))
  _, bf16_loss, bf16_grads = _loss_and_grads(bf16, params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(bf16_grads))
  np.testing.assert_allclose(bf16_loss, loss, rtol=2e-2)
  cosine = optax.tree_utils.tree_vdot(grads, bf16_grads) / (
      optax.tree_utils.tree_l2_norm(grads) * optax.tree_utils.tree_l2_norm(bf16_grads))
  assert cosine > 0.99


def test_bad_dtype_and_remat_are_errors():
  with pytest.raises(ValueError, match="dtype 'float16' is not one of"):
    dataclasses.replace(CFG, dtype='float16')
  with pytest.raises(ValueError, match="remat 'some' is not one of"):
    dataclasses.replace(CFG, remat='some')
