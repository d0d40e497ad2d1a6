"""Per-task output heads. Each reads the encoder features at its task's depth."""

import flax.linen as nn
import jax


class SentenceHead(nn.Module):
  """Classification (single sentence or pair) or regression from one vector per input."""
  num_outputs: int
  dropout_rate: float
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, pooled: jax.Array, deterministic: bool) -> jax.Array:
    x = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.normal(self.initializer_range),
                    name='classifier')(x)


class TaggingHead(nn.Module):
  """One label per token (POS, chunks, NER, slots): (B, S, D) -> (B, S, num_tags)."""
  num_tags: int
  dropout_rate: float
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, sequence: jax.Array, deterministic: bool) -> jax.Array:
    x = nn.Dropout(self.dropout_rate)(sequence, deterministic=deterministic)
    return nn.Dense(self.num_tags, kernel_init=nn.initializers.normal(self.initializer_range),
                    name='classifier')(x)
