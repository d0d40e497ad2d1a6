"""Shared-private sharing (Liu, Qiu & Huang 2017, "Adversarial Multi-task Learning for Text
Classification", ASP-MTL): a shared encoder for all tasks plus a small private encoder per
task. Task k's head reads [shared features; private_k features]. An orthogonality penalty
keeps the two feature spaces apart, and a task discriminator on the shared features (the
adversary, mtl_jax.objectives.adversarial) keeps task-specific information out of them.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.base import (ModelOutput, MultiTaskModel, feature, sentence_key,
                                 task_feature)
from mtl_jax.models.encoder import Encoder, EncoderConfig, sentence


class _PrivateEncoders(nn.Module):
  """N private encoders with stacked parameters, all run on the whole batch (one vmap)."""
  cfg: EncoderConfig
  num_tasks: int

  @nn.compact
  def __call__(self, input_ids, segment_ids, attention_mask, deterministic):
    stacked = nn.vmap(
        lambda module, *inputs: module(*inputs, deterministic=deterministic).hidden_states[-1],
        variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
        metadata_params={nn.PARTITION_NAME: None},  # the copy axis is not sharded
        in_axes=None, out_axes=0, axis_size=self.num_tasks)
    return stacked(Encoder(self.cfg, name='encoder'), input_ids, segment_ids, attention_mask)


def cross_statistics(shared: jax.Array, private: jax.Array) -> dict:
  """The batch sums the orthogonality penalty reads, for shared features S (B, D) and
  private ones P (N, B, d): the cross matrices Sᵀ P_k (N, D, d) and the row count B."""
  cross = jnp.einsum('bd,nbp->ndp', shared.astype(jnp.float32), private.astype(jnp.float32))
  return {'cross': cross, 'rows': jnp.asarray(shared.shape[0], jnp.float32)}


def orthogonality_penalty(statistics: dict) -> jax.Array:
  """Σ_k ‖Sᵀ P_k‖²_F / B² from the whole batch's `cross_statistics`.

  ASP-MTL's L_diff, divided by the squared batch size so the strength does not depend on B.
  Every private encoder sees every row here, so the sum runs over the whole batch for each
  task (ASP-MTL sums over task k's own examples). Not a sum over rows: it is computed once
  from the statistics summed over all devices and micro-batches (mtl_jax.train.step).
  """
  return jnp.square(statistics['cross']).sum() / statistics['rows'] ** 2


class SharedPrivate(MultiTaskModel):
  """The shared encoder (`encoder_config`) plus one private encoder per task, of the same
  architecture but `private_hidden_size` wide and `private_layers` deep. A pretrained
  checkpoint initialises the shared encoder; the narrower private ones start random."""
  private_hidden_size: int = 64
  private_layers: int = 1
  private_heads: int = 2
  orthogonality: float = 0.01  # strength γ of the orthogonality penalty

  # The private encoders are narrow BERT encoders read by the encoder's pooling; private
  # decoders are not built.
  backbones: ClassVar[tuple[str, ...]] = ('encoder',)

  def validate(self):
    for field in ('private_hidden_size', 'private_layers', 'private_heads'):
      if getattr(self, field) < 1:
        raise ValueError(f'{field} must be >= 1, got {getattr(self, field)}.')
    if self.private_hidden_size % self.private_heads:
      raise ValueError(f'private_hidden_size {self.private_hidden_size} is not divisible by '
                       f'private_heads {self.private_heads}.')
    if self.orthogonality < 0:
      raise ValueError(f'orthogonality must be >= 0, got {self.orthogonality}.')

  @property
  def has_statistics(self) -> bool:
    return self.orthogonality > 0

  def statistics_penalty(self, statistics: dict) -> jax.Array:
    return self.orthogonality * orthogonality_penalty(statistics)

  def setup(self):
    self.encoder = Encoder(self.encoder_config)
    private_cfg = dataclasses.replace(
        self.encoder_config, hidden_size=self.private_hidden_size,
        num_layers=self.private_layers, num_heads=self.private_heads,
        intermediate_size=4 * self.private_hidden_size, pooler=False)
    self.private = _PrivateEncoders(private_cfg, len(self.tasks))
    self.setup_heads()

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True) -> dict:
    """The shared features the heads read, and the inputs the private encoders need."""
    features = self.encoder(input_ids, segment_ids, attention_mask,
                            deterministic=deterministic)
    keys = set(self.keys().values()) | {sentence_key(self.encoder_config)}
    return {'shared': {key: feature(key, features) for key in sorted(keys)},
            'inputs': (input_ids, segment_ids, attention_mask)}

  def decode(self, representation: dict, *, deterministic=True) -> ModelOutput:
    shared = representation['shared']
    private = self.private(*representation['inputs'], deterministic)  # (N, B, S, d)
    _, segments, mask = representation['inputs']
    pooling = self.encoder_config.pooling
    private_sentences = jax.vmap(lambda x: sentence(x, mask, pooling))(private)
    features = {}
    for i, task in enumerate(self.tasks):
      own = task_feature(task, private[i], mask, segments, self.encoder_config)
      features[task.name] = jnp.concatenate([shared[self.keys()[task.name]], own], axis=-1)
    shared_sentence = shared[sentence_key(self.encoder_config)]
    statistics = (cross_statistics(shared_sentence, private_sentences) if self.has_statistics
                  else None)
    return ModelOutput(self.head_outputs(features, deterministic), jnp.zeros(()),
                       shared_sentence if self.shared_features else None, statistics)
