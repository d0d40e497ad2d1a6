"""Hard parameter sharing: one shared encoder, one head per task."""

import flax.linen as nn
import jax

from mtl_jax.models.encoder import Encoder, EncoderConfig, EncoderOutput
from mtl_jax.models.heads import Head
from mtl_jax.tasks import Task, TaskKind


def representation_key(task: Task, num_layers: int, pooler: bool) -> str:
  """Which encoder feature a task's head reads: a layer's sequence, its [CLS] state, or
  the pooler (BERT's classifier input, for a sentence task at the last layer)."""
  depth = num_layers if task.depth == -1 else task.depth
  if depth > num_layers:
    raise ValueError(f'Task {task.name!r} is supervised at depth {depth}, but the encoder has '
                     f'{num_layers} layers.')
  if task.kind is TaskKind.TAGGING:
    return f'sequence_{depth}'
  if depth == num_layers and pooler:
    return 'pooled'
  return f'cls_{depth}'


def _feature(key: str, features: EncoderOutput) -> jax.Array:
  if key == 'pooled':
    return features.pooled
  kind, depth = key.split('_')
  sequence = features.hidden_states[int(depth)]
  return sequence if kind == 'sequence' else sequence[:, 0]


class HardSharing(nn.Module):
  """inputs -> {task name: logits (B, C) | (B, S, C), or predictions (B,) for regression}.

  `encode` (shared parameters) maps inputs to the shared representation: the features the
  heads read, by `representation_key`. `decode` (the task heads) maps that to outputs.
  Gradient methods in representation mode differentiate through the two halves apart.
  """
  encoder_config: EncoderConfig
  tasks: tuple[Task, ...]
  head_dropout_rate: float = 0.1

  # Top-level parameter collections shared by all tasks; the rest are task-specific.
  shared_params = ('encoder',)

  def setup(self):
    self.encoder = Encoder(self.encoder_config)
    self.heads = {t.name: Head(t.num_labels, self.head_dropout_rate, name=f'head_{t.name}')
                  for t in self.tasks}

  def _keys(self) -> dict[str, str]:
    cfg = self.encoder_config
    return {t.name: representation_key(t, cfg.num_layers, cfg.pooler) for t in self.tasks}

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True
             ) -> dict[str, jax.Array]:
    features = self.encoder(input_ids, segment_ids, attention_mask,
                            deterministic=deterministic)
    return {key: _feature(key, features) for key in sorted(set(self._keys().values()))}

  def decode(self, representation: dict[str, jax.Array], *, deterministic=True) -> dict:
    outputs = {}
    for task in self.tasks:
      out = self.heads[task.name](representation[self._keys()[task.name]], deterministic)
      outputs[task.name] = out[..., 0] if task.kind is TaskKind.REGRESSION else out
    return outputs

  def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
    representation = self.encode(input_ids, segment_ids, attention_mask,
                                 deterministic=deterministic)
    return self.decode(representation, deterministic=deterministic)
