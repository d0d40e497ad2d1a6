"""Soft parameter sharing: one encoder per task (or per task group), the copies coupled by a
penalty on their parameters instead of being one shared set (Ruder 2017, "An Overview of
Multi-Task Learning in Deep Neural Networks", section 3.2).

The G encoders are one `nn.vmap`ped Encoder whose parameters carry a leading axis G, so the
copies run as one batched computation (no Python loop over copies) and a penalty sees each
parameter as one stacked array.
"""

import functools
from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.base import ModelOutput, MultiTaskModel, feature
from mtl_jax.models.encoder import Encoder

# Smooths the nuclear norm near a zero singular value (see trace_penalty).
TRACE_EPSILON = 1e-6


def l2_penalty(stacked) -> jax.Array:
  """Duong et al. 2015 ("Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in
  a Neural Network Parser"), generalised from two copies to G:

    P = Σ_leaves Σ_g ||θ_g − θ̄||²,   θ̄ = (1/G) Σ_g θ_g,

  which equals the pairwise form (1/G) Σ_{g<h} ||θ_g − θ_h||² (for G = 2: ½||θ_1 − θ_2||²).
  `stacked`: a pytree of arrays with the copies on axis 0. ∂P/∂θ_g = 2 (θ_g − θ̄).
  """
  return sum(jnp.sum(jnp.square(x - x.mean(0))) for x in jax.tree.leaves(stacked))


def trace_penalty(stacked, epsilon: float = TRACE_EPSILON) -> jax.Array:
  """Yang & Hospedales 2017 ("Trace Norm Regularised Deep Multi-Task Learning"), the
  stacked tensor flattened along the task axis:

    P = Σ_leaves ||W_leaf||_*,   W_leaf the (G, numel) matrix of the leaf's G copies,

  ||·||_* the nuclear norm, the sum of the singular values σ_k. Low rank = copies that are
  combinations of a few shared ones.

  σ_k = ||u_kᵀ W|| for u_k the eigenvectors of the G×G Gram matrix W Wᵀ: G²·numel work and
  a G×G eigh, far cheaper than an SVD of the wide W and its gradient. U is held
  constant: Σ_k h(||u_kᵀ W||²) with h concave is smallest, over orthonormal bases, at the
  eigenvectors (Schur-Horn), so U's own derivative would contribute nothing, and eigh's
  eigenvector derivative is infinite where eigenvalues repeat (identical copies).

  Each σ_k enters as √(σ_k² + ε) − √ε, within √ε = 1e-3 of σ_k, so that its gradient
  σ_k/√(σ_k² + ε) u_k v_kᵀ vanishes at σ_k = 0. The nuclear norm has no gradient there (any
  unit direction is a subgradient), and zero singular values are common: identical copies
  (LayerNorm scales start as ones) and zero-initialised biases; float32 turns them into
  tiny nonzero σ_k with arbitrary u_k, which ε damps.
  """
  dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)

  def nuclear(x):
    w = x.reshape(x.shape[0], -1)
    _, u = jnp.linalg.eigh(dot(w, w.T))
    squared = jnp.sum(jnp.square(dot(jax.lax.stop_gradient(u).T, w)), axis=1)  # σ_k²
    return jnp.sum(jnp.sqrt(squared + epsilon) - jnp.sqrt(epsilon))

  return sum(nuclear(x) for x in jax.tree.leaves(stacked))


PENALTIES: dict[str, Callable] = {'l2': l2_penalty, 'trace': trace_penalty}


class _Encoder(Encoder):
  """The Encoder with `deterministic` positional: nn.vmap drops keyword arguments."""

  def __call__(self, input_ids, segment_ids, attention_mask, deterministic):
    return super().__call__(input_ids, segment_ids, attention_mask,
                            deterministic=deterministic)


class SoftSharing(MultiTaskModel):
  """G encoders, task i reading encoder `groups[i]` (empty: one encoder per task), and the
  objective gains `strength` × P(stacked encoder parameters), P from PENALTIES.

  No parameter is shared by all tasks, so `encode` is the identity on the inputs and
  `decode` runs the encoders; gradient-aggregation methods and the adversary do not apply.
  Cost: G times the encoder's compute and memory for a batch.
  """
  groups: tuple[int, ...] = ()
  penalty: str = 'l2'
  strength: float = 1e-3

  shared_params: ClassVar[tuple[str, ...]] = ()
  # The G copies are vmapped Encoders (and pretrained.py loads BERT checkpoints into them);
  # G copies of a decoder are not built.
  backbones: ClassVar[tuple[str, ...]] = ('encoder',)

  @property
  def task_groups(self) -> tuple[int, ...]:
    """Encoder id of each task."""
    return tuple(self.groups) or tuple(range(len(self.tasks)))

  @property
  def num_copies(self) -> int:
    return len(set(self.task_groups))

  def setup(self):
    stacked = nn.vmap(_Encoder, variable_axes={'params': 0},
                      metadata_params={nn.PARTITION_NAME: None},  # copy axis unsharded
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=None, out_axes=0, axis_size=self.num_copies)
    self.encoders = stacked(self.encoder_config)
    self.setup_heads()

  def validate(self):
    if self.penalty not in PENALTIES:
      raise ValueError(f'penalty {self.penalty!r} is not one of {sorted(PENALTIES)}.')
    if not self.strength >= 0:  # also rejects NaN
      raise ValueError(f'strength must be >= 0, got {self.strength!r}.')
    if not self.groups:
      return
    names = [t.name for t in self.tasks]
    if len(self.groups) != len(self.tasks):
      raise ValueError(f'groups has {len(self.groups)} entries for the {len(names)} tasks '
                       f'{names}; give one encoder id per task, or none for one each.')
    ids = set(self.groups)
    if not all(isinstance(g, int) for g in ids) or ids != set(range(len(ids))):
      raise ValueError(f'groups {tuple(self.groups)}: encoder ids must be the integers '
                       f'0..G-1, each used by some task.')

  @property
  def regularized(self) -> bool:
    return self.strength > 0 and self.num_copies > 1

  def with_encoder(self, params: dict, encoder: dict) -> dict:
    """Every one of the G encoders starts from `encoder`: the copies then differ only as
    fine-tuning moves them apart, which is what the coupling penalty measures."""
    stack = lambda x: jnp.broadcast_to(x, (self.num_copies, *x.shape))
    return {**params, 'encoders': jax.tree.map(stack, encoder)}

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True) -> dict:
    del deterministic  # nothing is shared: the encoders run in decode
    return {'input_ids': input_ids, 'segment_ids': segment_ids,
            'attention_mask': attention_mask}

  def decode(self, representation: dict, *, deterministic=True) -> ModelOutput:
    outputs = self.encoders(representation['input_ids'], representation['segment_ids'],
                            representation['attention_mask'], deterministic)
    features = {
        name: feature(key, jax.tree.map(lambda x, g=group: x[g], outputs))
        for (name, key), group in zip(self.keys().items(), self.task_groups)}
    return ModelOutput(self.head_outputs(features, deterministic), self.coupling(), None)

  def coupling(self) -> jax.Array:
    """strength × P of the stacked encoder parameters (0 when nothing is coupled)."""
    if not self.regularized:
      return jnp.zeros(())
    return self.strength * PENALTIES[self.penalty](self.encoders.variables['params'])
