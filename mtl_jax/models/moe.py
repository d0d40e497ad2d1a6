"""Mixture-of-experts sharing: MMoE / OMoE (Ma et al. 2018) and PLE (Tang et al. 2020).

The layers map features x of shape (..., D) (a vector per input (B, D), or per token
(B, S, D)) to one mixture per task, (T, ..., H). The architectures put them over the
Transformer encoder's last layer (docs/moe.md).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models import backbone
from mtl_jax.models.base import (ModelOutput, MultiTaskModel, feature, is_pair, sentence_key,
                                 task_feature)
from mtl_jax.tasks import TaskKind


def stacked(module: type[nn.Module], size: int, in_axes) -> type[nn.Module]:
  """`size` independent copies of `module`, parameters stacked on a new leading axis and
  outputs too: all copies read one input (in_axes=None) or copy g reads input[g] (0)."""
  return nn.vmap(module, variable_axes={'params': 0}, split_rngs={'params': True},
                 metadata_params={nn.PARTITION_NAME: None},  # the copy axis is not sharded
                 in_axes=in_axes, out_axes=0, axis_size=size)


class Expert(nn.Module):
  """One expert network f_i(x) = relu(W_i x + b_i): the single-layer experts of Ma et al.
  2018 (section 5) and Tang et al. 2020."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(nn.Dense(self.hidden, name='dense')(x))


class Gate(nn.Module):
  """A gating network g(x) = softmax(W_g x + b_g) over `num_experts` experts (Ma et al.
  2018, eq. 8; Tang et al. 2020, eq. 3): (..., D) -> (..., E)."""
  num_experts: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(nn.Dense(self.num_experts, name='dense')(x), axis=-1)


def mix(weights: jax.Array, experts: jax.Array) -> jax.Array:
  """Σ_i g(x)_i f_i(x): weights (..., N, E) and expert outputs (E, N, H) -> (..., N, H)."""
  return jnp.einsum('...ne,enh->...nh', weights, experts)


def _rows(x: jax.Array) -> jax.Array:
  """(..., D) -> (N, D). Experts and gates act on each vector alone, and a kernel gradient
  over one contracting axis needs no transposed copy of the activations (encoder._dense)."""
  return x.reshape(-1, x.shape[-1])


class MMoE(nn.Module):
  """Multi-gate mixture of experts (Ma et al. 2018, eq. 7-8):
  f^k(x) = Σ_i g^k(x)_i f_i(x), g^k(x) = softmax(W_gk x), one gate per task.

  With `shared_gate` all tasks read one gate: the one-gate MoE baseline (OMoE) of the paper.
  (..., D) -> (num_tasks, ..., hidden).
  """
  num_tasks: int
  num_experts: int
  hidden: int
  shared_gate: bool = False

  def setup(self):
    self.experts = stacked(Expert, self.num_experts, None)(self.hidden)
    self.gates = stacked(Gate, 1 if self.shared_gate else self.num_tasks, None)(
        self.num_experts)

  def __call__(self, x: jax.Array) -> jax.Array:
    rows = _rows(x)
    mixtures = mix(self.gates(rows), self.experts(rows))  # (gates, N, H)
    mixtures = jnp.broadcast_to(mixtures, (self.num_tasks,) + mixtures.shape[1:])
    return mixtures.reshape(self.num_tasks, *x.shape[:-1], self.hidden)


class CGC(nn.Module):
  """One extraction network of PLE: customized gate control (Tang et al. 2020, eq. 2-4).

  Task k's gate, computed from task k's input, mixes [task k's experts; shared experts]:
  g^k = w^k(x_k) S^k. Task experts read their task's input, shared experts the shared input.
  With `shared_gate` (every level below the last, eq. 5-6) a gate on the shared input also
  mixes ALL experts into the next level's shared input.

  (task inputs (T, N, D), shared input (N, D)) -> ((T, N, H), (N, H) or None).
  """
  num_tasks: int
  task_experts: int
  shared_experts: int
  hidden: int
  shared_gate: bool

  @nn.compact
  def __call__(self, task_inputs: jax.Array, shared_input: jax.Array):
    own = stacked(stacked(Expert, self.task_experts, None), self.num_tasks, 0)(
        self.hidden, name='task_experts')(task_inputs)  # (T, m_t, N, H)
    shared = stacked(Expert, self.shared_experts, None)(
        self.hidden, name='shared_experts')(shared_input)  # (m_s, N, H)
    weights = stacked(Gate, self.num_tasks, 0)(
        self.task_experts + self.shared_experts, name='task_gates')(task_inputs)
    split = self.task_experts
    outputs = (jax.vmap(mix)(weights[..., :split], own)
               + mix(weights[..., split:], shared))
    if not self.shared_gate:
      return outputs, None
    everyone = jnp.concatenate([own.reshape(-1, *own.shape[2:]), shared])
    return outputs, mix(Gate(everyone.shape[0], name='shared_gate')(shared_input), everyone)


class PLE(nn.Module):
  """Progressive layered extraction (Tang et al. 2020, eq. 5-6): `levels` stacked CGC
  networks. Level 1 reads x everywhere; at level j task k's experts and gate read task k's
  level j-1 output, the shared experts read the shared gate's level j-1 output. The last
  level has no shared gate. levels=1 is CGC. (..., D) -> (num_tasks, ..., hidden).
  """
  num_tasks: int
  task_experts: int
  shared_experts: int
  hidden: int
  levels: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shared = _rows(x)
    tasks = jnp.broadcast_to(shared, (self.num_tasks,) + shared.shape)
    for level in range(self.levels):
      tasks, shared = CGC(self.num_tasks, self.task_experts, self.shared_experts, self.hidden,
                          shared_gate=level < self.levels - 1, name=f'level_{level}')(
                              tasks, shared)
    return tasks.reshape(self.num_tasks, *x.shape[:-1], self.hidden)


def _require_positive(model: nn.Module, fields: tuple[str, ...]):
  for name in fields:
    value = getattr(model, name)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')


class ExpertSharing(MultiTaskModel):
  """The shared encoder, then a mixture-of-experts layer over its last layer's hidden states
  (B, S, D), then the heads. A tagging task's head reads its mixture at every token, a
  sentence task's head its mixture at the [CLS] position (the decoder's: at the last real
  token).

  `encode` returns the encoder output, so gradient methods take per-task gradients with
  respect to the encoder (`shared_params`) or its output. The experts are shared by the
  tasks but come after that representation: they are updated like the heads (docs/moe.md).
  Subclasses define `mixture_layer()`, which returns the mixture layer (MMoE or PLE).
  """

  def setup(self):
    self.encoder = backbone.module(self.encoder_config)
    self.mixture = self.mixture_layer()
    self.setup_heads()

  @property
  def tags(self) -> bool:
    return any(t.kind is TaskKind.TAGGING for t in self.tasks)

  def validate(self):
    num_layers = self.encoder_config.num_layers
    deeper = [t.name for t in self.tasks if t.depth not in (-1, num_layers)]
    if deeper:
      raise ValueError(f'the experts read the last encoder layer; tasks {deeper} ask for '
                       f'a lower depth.')

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True
             ) -> dict[str, jax.Array]:
    features = self.encoder(input_ids, segment_ids, attention_mask,
                            deterministic=deterministic)
    last = features.hidden_states[-1]
    # Experts and gates act token by token: without tagging tasks, mean pooling or pair
    # features only [CLS] is read (the decoder's last real token).
    cfg = self.encoder_config
    whole = (self.tags or cfg.pooling == 'mean'
             or (cfg.pair_features and any(map(is_pair, self.tasks))))
    if whole:
      part = lambda x: x
    elif cfg.pooling == backbone.LAST:
      part = lambda x: backbone.last_slice(x, attention_mask)
    else:
      part = lambda x: x[:, :1]
    representation = {'sequence': part(last), 'attention_mask': part(attention_mask),
                      'segment_ids': part(segment_ids)}
    if self.shared_features:
      key = sentence_key(self.encoder_config)
      representation[key] = feature(key, features)
    return representation

  def decode(self, representation: dict[str, jax.Array], *, deterministic=True
             ) -> ModelOutput:
    mixtures = self.mixture(representation['sequence'])  # (T, B, S, H)
    features = {t.name: task_feature(t, m, representation['attention_mask'],
                                     representation['segment_ids'], self.encoder_config)
                for t, m in zip(self.tasks, mixtures)}
    shared = (representation[sentence_key(self.encoder_config)] if self.shared_features
              else None)
    return ModelOutput(self.head_outputs(features, deterministic), jnp.zeros(()), shared)


class MMoESharing(ExpertSharing):
  """Encoder + MMoE (Ma et al. 2018); `shared_gate=True` is the one-gate OMoE baseline."""
  num_experts: int = 4
  expert_hidden: int = 256
  shared_gate: bool = False

  def mixture_layer(self) -> nn.Module:
    return MMoE(len(self.tasks), self.num_experts, self.expert_hidden, self.shared_gate)

  def validate(self):
    super().validate()
    _require_positive(self, ('num_experts', 'expert_hidden'))
    if not isinstance(self.shared_gate, bool):
      raise ValueError(f'shared_gate must be True or False, got {self.shared_gate!r}.')


class PLESharing(ExpertSharing):
  """Encoder + PLE (Tang et al. 2020); levels=1 is CGC."""
  task_experts: int = 1
  shared_experts: int = 2
  expert_hidden: int = 256
  levels: int = 2

  def mixture_layer(self) -> nn.Module:
    return PLE(len(self.tasks), self.task_experts, self.shared_experts, self.expert_hidden,
               self.levels)

  def validate(self):
    super().validate()
    _require_positive(self, ('task_experts', 'shared_experts', 'expert_hidden', 'levels'))
