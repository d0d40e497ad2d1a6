"""The contract every sharing architecture keeps, and what they have in common.

A model maps token inputs to a ModelOutput in two halves:
  encode(input_ids, segment_ids, attention_mask) -> representation   (shared parameters only)
  decode(representation)                         -> ModelOutput       (the rest)
Architectures implement both on rows of shape (R, S). Callers use encode_batch and
decode_batch (or call the model), which also take batches of multiple-choice rows
(B, C, S): the B·C candidate inputs go through the architecture as rows, and the outputs
come back per example (mtl_jax.tasks.num_choices).
`shared_params` names the top-level parameter collections that every task shares; gradient
methods take per-task gradients with respect to them (or to the representation). An
architecture that shares no parameters says so with `shared_params = ()`.

The backbone (`encoder_config`) is the BERT-style encoder or the Llama-layout decoder
(models/backbone.py); `backbones` names those an architecture works with.
"""

from typing import ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.models.backbone import (BACKBONES, LAST, DecoderBackboneConfig, backbone_name,
                                     last_token)
from mtl_jax.models.encoder import EncoderConfig, EncoderOutput, pair_features, sentence
from mtl_jax.models.heads import Head
from mtl_jax.tasks import Task, TaskKind, num_choices


class ModelOutput(flax.struct.PyTreeNode):
  tasks: dict  # task name -> logits (B, C) | tag logits (B, S, C) | regression values (B,)
  #              | choice scores (B, C)
  penalty: jax.Array  # scalar regulariser the architecture adds to the objective (0: none)
  shared: jax.Array | None  # (B, D) shared sentence features (MultiTaskModel.shared_features)
  # Batch sums (a pytree) that a regulariser is a nonlinear function of: the step sums them
  # over the whole batch (every device and micro-batch) and calls model.statistics_penalty.
  statistics: dict | None = None


def task_depth(task: Task, num_layers: int) -> int:
  """The encoder layer a task is supervised at (its spec's depth; -1 = the last)."""
  depth = num_layers if task.depth == -1 else task.depth
  if depth > num_layers:
    raise ValueError(f'Task {task.name!r} is supervised at depth {depth}, but the encoder has '
                     f'{num_layers} layers.')
  return depth


def is_pair(task: Task) -> bool:
  """Whether the task reads a sentence pair (two segments of one input row)."""
  return task.kind is not TaskKind.TAGGING and len(task.input_fields) == 2


BackboneConfig = EncoderConfig | DecoderBackboneConfig


def feature_kind(task: Task, cfg: BackboneConfig) -> str:
  """How a task's head reads token states: 'sequence' (tagging), 'pair' (a pair task with
  cfg.pair_features) or the sentence feature's pooling (cfg.pooling; the decoder's is
  'last', the last real token)."""
  if task.kind is TaskKind.TAGGING:
    return 'sequence'
  if cfg.pair_features and is_pair(task):
    return 'pair'
  return cfg.pooling


def head_hidden(task: Task, cfg: BackboneConfig) -> int:
  """The hidden width of a task's head: cfg.pair_head_hidden for a head that compares two
  sentences' features (a subset or an overlap is not linear in them), else 0 (linear)."""
  return cfg.pair_head_hidden if feature_kind(task, cfg) == 'pair' else 0


def representation_key(task: Task, cfg: BackboneConfig) -> str:
  """Which encoder feature a task's head reads: '<feature_kind>_<depth>', or the pooler
  (BERT's classifier input, for a sentence task at the last layer)."""
  depth = task_depth(task, cfg.num_layers)
  kind = feature_kind(task, cfg)
  if kind == cfg.pooling and depth == cfg.num_layers and cfg.pooler:
    return 'pooled'
  return f'{kind}_{depth}'


def read_feature(kind: str, sequence: jax.Array, attention_mask: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
  """Token states (B, S, D) read the way `kind` (feature_kind) says."""
  if kind == 'sequence':
    return sequence
  if kind == 'pair':
    return pair_features(sequence, attention_mask, segment_ids)
  if kind == LAST:
    return last_token(sequence, attention_mask)
  return sentence(sequence, attention_mask, kind)


def feature(key: str, features: EncoderOutput) -> jax.Array:
  """The array `representation_key` names."""
  if key == 'pooled':
    return features.pooled
  kind, depth = key.split('_')
  return read_feature(kind, features.hidden_states[int(depth)], features.attention_mask,
                      features.segment_ids)


def key_depth(key: str, num_layers: int) -> int:
  """The depth a representation_key reads ('pooled' reads the last layer)."""
  return num_layers if key == 'pooled' else int(key.split('_')[1])


def task_feature(task: Task, sequence: jax.Array, attention_mask: jax.Array,
                 segment_ids: jax.Array, cfg: BackboneConfig) -> jax.Array:
  """What a task's head reads from token states an architecture computed for it (task
  layers, experts, a private encoder), as it reads the encoder's."""
  return read_feature(feature_kind(task, cfg), sequence, attention_mask, segment_ids)


def sentence_key(cfg: BackboneConfig) -> str:
  """The last layer's sentence feature: what a sentence head at full depth reads."""
  return 'pooled' if cfg.pooler else f'{cfg.pooling}_{cfg.num_layers}'


class MultiTaskModel(nn.Module):
  """Fields and parts common to all architectures: the backbone's config, the tasks and their
  heads.

  Subclasses call `self.setup_heads()` in their setup and implement encode and decode.
  """
  encoder_config: BackboneConfig  # the backbone's (models/backbone.py)
  tasks: tuple[Task, ...]
  head_dropout_rate: float = 0.1
  # ModelOutput.shared holds the shared sentence features (an objective term reads them,
  # e.g. the adversary's discriminator); off, it is None.
  shared_features: bool = False

  shared_params: ClassVar[tuple[str, ...]] = ('encoder',)
  # The batch keys the model is called with, in order (a language model's differ).
  input_keys: ClassVar[tuple[str, ...]] = INPUT_KEYS
  # The backbones (backbone.BACKBONES) the architecture works with; architectures.build and
  # config.validate refuse another.
  backbones: ClassVar[tuple[str, ...]] = BACKBONES

  def setup_heads(self):
    self.heads = {t.name: Head(t.num_outputs, self.head_dropout_rate,
                               head_hidden(t, self.encoder_config), name=f'head_{t.name}')
                  for t in self.tasks}

  def validate(self):
    """Raises ValueError on fields that do not fit together (architectures override)."""

  def with_encoder(self, params: dict, encoder: dict) -> dict:
    """`params` with every copy of the `encoder_config` encoder set to `encoder` (a
    pretrained checkpoint's, mtl_jax.models.pretrained): here the one shared encoder."""
    return {**params, 'encoder': encoder}

  @property
  def regularized(self) -> bool:
    """Whether the model adds a regulariser, ModelOutput.penalty or `statistics_penalty`
    (the step then differentiates it)."""
    return self.has_statistics

  @property
  def has_statistics(self) -> bool:
    """Whether ModelOutput.statistics holds batch sums for `statistics_penalty`."""
    return False

  def statistics_penalty(self, statistics: dict) -> jax.Array:
    """The regulariser on the whole batch's statistics (ModelOutput.statistics summed over
    every slice of the batch). A mean over rows divides by a row count summed among them.
    None here: a model without statistics adds no such regulariser."""
    del statistics
    return jnp.zeros((), jnp.float32)

  def keys(self) -> dict[str, str]:
    """task name -> the representation_key its head reads."""
    cfg = self.encoder_config
    return {t.name: representation_key(t, cfg) for t in self.tasks}

  @property
  def backbone(self) -> str:
    """'encoder' or 'decoder': which backbone encoder_config configures."""
    return backbone_name(self.encoder_config)

  def reads_lower_layers(self) -> bool:
    """Whether a head reads the backbone below its last layer (the decoder then keeps
    every layer's states)."""
    num_layers = self.encoder_config.num_layers
    return any(key_depth(k, num_layers) < num_layers for k in self.keys().values())

  def head_outputs(self, features: dict[str, jax.Array], deterministic: bool) -> dict:
    """Each task's head on its own features (task name -> array)."""
    outputs = {}
    for task in self.tasks:
      out = self.heads[task.name](features[task.name], deterministic)
      outputs[task.name] = out if task.num_outputs > 1 else out[..., 0]
    return outputs

  @property
  def num_choices(self) -> int:
    return num_choices(self.tasks)

  def example_inputs(self, batch_size: int, seq_len: int) -> jax.ShapeDtypeStruct:
    """The shape of a batch's input_ids (and segment ids, attention mask)."""
    choices = (self.num_choices,) if self.num_choices > 1 else ()
    return jax.ShapeDtypeStruct((batch_size, *choices, seq_len), jnp.int32)

  def encode_batch(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
    """encode() of a batch: (B, S) rows, or (B, C, S) choices encoded as B·C rows."""
    inputs = (input_ids, segment_ids, attention_mask)
    if input_ids.ndim == 3:
      inputs = tuple(x.reshape((-1, x.shape[-1])) for x in inputs)
    return self.encode(*inputs, deterministic=deterministic)

  def decode_batch(self, representation, *, deterministic=True) -> ModelOutput:
    """decode() of encode_batch's representation, with outputs per example: a multiple-choice
    task's scores (B, C); any other task reads the example's first (only) input."""
    output = self.decode(representation, deterministic=deterministic)
    if self.num_choices == 1:
      return output
    per_example = lambda x: x.reshape((-1, self.num_choices) + x.shape[1:])
    tasks = {}
    for task in self.tasks:
      out = per_example(output.tasks[task.name])
      tasks[task.name] = out if task.kind is TaskKind.MULTIPLE_CHOICE else out[:, 0]
    shared = None if output.shared is None else per_example(output.shared)[:, 0]
    return output.replace(tasks=tasks, shared=shared)

  def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True
               ) -> ModelOutput:
    representation = self.encode_batch(input_ids, segment_ids, attention_mask,
                                       deterministic=deterministic)
    return self.decode_batch(representation, deterministic=deterministic)

