"""Hard parameter sharing: one shared encoder, one head per task."""

import flax.linen as nn
import jax

from mtl_jax.models.encoder import Encoder, EncoderConfig, EncoderOutput
from mtl_jax.models.heads import Head
from mtl_jax.tasks import Task, TaskKind


def head_input(task: Task, features: EncoderOutput, num_layers: int) -> jax.Array:
  """The features a task's head reads: its layer's sequence, or one vector per input.

  A sentence task supervised at the last layer reads the pooler (BERT's classifier input)
  when there is one; at a lower depth it reads that layer's [CLS] state.
  """
  depth = num_layers if task.depth == -1 else task.depth
  if depth > num_layers:
    raise ValueError(f'Task {task.name!r} is supervised at depth {depth}, but the encoder has '
                     f'{num_layers} layers.')
  sequence = features.hidden_states[depth]
  if task.kind is TaskKind.TAGGING:
    return sequence
  if depth == num_layers and features.pooled is not None:
    return features.pooled
  return sequence[:, 0]


class HardSharing(nn.Module):
  """inputs -> {task name: logits (B, C) | (B, S, C), or predictions (B,) for regression}.

  `encode` (shared parameters) and `decode` (the task heads) can be applied separately:
  gradient methods in representation mode differentiate through the two halves apart.
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

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True
             ) -> EncoderOutput:
    return self.encoder(input_ids, segment_ids, attention_mask, deterministic=deterministic)

  def decode(self, features: EncoderOutput, *, deterministic=True) -> dict:
    outputs = {}
    for task in self.tasks:
      x = head_input(task, features, self.encoder_config.num_layers)
      out = self.heads[task.name](x, deterministic)
      outputs[task.name] = out[..., 0] if task.kind is TaskKind.REGRESSION else out
    return outputs

  def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
    features = self.encode(input_ids, segment_ids, attention_mask, deterministic=deterministic)
    return self.decode(features, deterministic=deterministic)
