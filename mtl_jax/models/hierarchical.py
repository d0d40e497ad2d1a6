"""Hierarchical sharing: tasks branch off one shared encoder at their own depths.

Søgaard & Goldberg (2016, "Deep multi-task learning with low level tasks supervised at lower
layers") supervise a low-level task (POS) at an inner layer of a shared stack and a higher one
(chunking) at the top; the Joint Many-Task model (Hashimoto et al. 2017) then gives each task
its own layers stacked over the shared ones. Here task i reads the shared encoder's hidden
states at its depth d_i (Task.depth, config.task_depths), passes them through `task_layers`
Transformer layers of its own, and its head reads the result: the sequence for a tagging task,
the [CLS] position of its top layer for a sentence task.

Over the decoder backbone the task layers are decoder layers (causal, rotary, over the row's
real tokens) followed by an RMSNorm of their own, and a sentence task's head reads the last
real token of their output (models/backbone.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models import backbone
from mtl_jax.models.base import ModelOutput, sentence_key, task_depth, task_feature
from mtl_jax.models.decoder import (DecoderConfig, DecoderLayer, LayerInputs, RMSNorm,
                                    frequencies, segment_mask)
from mtl_jax.models.encoder import EncoderConfig, Layer, attention_bias
from mtl_jax.models.multitask import HardSharing

MASK = 'attention_mask'  # the representation carries it: the task layers attend over tokens
SEGMENTS = 'segment_ids'  # and these: a pair task's features compare the two segments


class TaskLayers(nn.Module):
  """A task's own stack of `num_layers` BERT layers (the encoder's config)."""
  cfg: EncoderConfig
  num_layers: int

  @nn.compact
  def __call__(self, x, bias, deterministic):
    for i in range(self.num_layers):
      x = Layer(self.cfg, name=f'layer_{i}')(x, bias, deterministic)
    return x


class DecoderTaskLayers(nn.Module):
  """A task's own stack of `num_layers` decoder layers (the backbone's DecoderConfig) over
  right-padded rows, then an RMSNorm: (B, S, D) states, (B, S) attention mask -> (B, S, D)."""
  cfg: DecoderConfig
  num_layers: int

  @nn.compact
  def __call__(self, x, attention_mask):
    cfg = self.cfg
    positions, segments = backbone.row_inputs(attention_mask)
    inv_freq, factor = frequencies(cfg, positions)
    inputs = LayerInputs(positions, segment_mask(segments, positions, cfg.sliding_window),
                         None, inv_freq, None)
    for i in range(self.num_layers):
      x, _ = DecoderLayer(cfg, factor, name=f'layer_{i}')(x, None, inputs)
    return RMSNorm(cfg.rms_norm_eps, name='norm')(x)


class Hierarchical(HardSharing):
  """Shared encoder (the bottom), then per task `task_layers` layers of its own over the
  hidden states at its depth, then its head. With task_layers = 0 this is HardSharing.
  A pretrained checkpoint initialises the shared encoder; the task layers start random.

  `encode` returns what HardSharing's does (the shared features the tasks branch from, by
  `keys()`), plus the integer attention mask, which representation-mode gradient methods
  pass through untouched (they differentiate the float arrays only).
  """
  task_layers: int = 1

  def setup(self):
    super().setup()
    cfg = self.encoder_config
    if self.backbone == 'decoder':
      self.branches = {t.name: DecoderTaskLayers(cfg.decoder, self.task_layers,
                                                 name=f'layers_{t.name}') for t in self.tasks}
    else:
      self.branches = {t.name: TaskLayers(cfg, self.task_layers, name=f'layers_{t.name}')
                       for t in self.tasks}

  def validate(self):
    if isinstance(self.task_layers, bool) or not isinstance(self.task_layers, int) \
        or self.task_layers < 0:
      raise ValueError(f'task_layers must be an integer >= 0, got {self.task_layers!r}.')

  def keys(self) -> dict[str, str]:
    if not self.task_layers:
      return super().keys()
    # Task layers attend over the whole sequence, so every task reads its layer's sequence.
    num_layers = self.encoder_config.num_layers
    return {t.name: f'sequence_{task_depth(t, num_layers)}' for t in self.tasks}

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True
             ) -> dict[str, jax.Array]:
    representation = super().encode(input_ids, segment_ids, attention_mask,
                                    deterministic=deterministic)
    if self.task_layers:
      representation[MASK] = attention_mask
      representation[SEGMENTS] = segment_ids
    return representation

  def decode(self, representation: dict[str, jax.Array], *, deterministic=True
             ) -> ModelOutput:
    if not self.task_layers:
      return super().decode(representation, deterministic=deterministic)
    keys = self.keys()
    mask = representation[MASK]
    if self.backbone == 'decoder':
      branch = lambda name, x: self.branches[name](x, mask)
    else:
      bias = attention_bias(mask, representation[keys[self.tasks[0].name]].dtype)
      branch = lambda name, x: self.branches[name](x, bias, deterministic)
    features = {}
    # A loop, not nn.vmap over tasks: tasks at different depths start from different
    # hidden states, and each stack is small.
    for task in self.tasks:
      x = branch(task.name, representation[keys[task.name]])
      features[task.name] = task_feature(task, x, representation[MASK],
                                         representation[SEGMENTS], self.encoder_config)
    shared = (representation[sentence_key(self.encoder_config)] if self.shared_features
              else None)
    return ModelOutput(self.head_outputs(features, deterministic), jnp.zeros(()), shared)
