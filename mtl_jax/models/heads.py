"""Per-task output heads. Each reads the encoder features at its task's depth."""

import flax.linen as nn
import jax

from mtl_jax.models.encoder import dense_init


class Head(nn.Module):
  """Dropout, then a linear map of the last axis, as BERT's task heads; with `hidden` > 0,
  first a ReLU layer of that width and dropout again, as InferSent's classifier.

  One vector per input (B, D) gives class logits or a regression value (B, num_outputs);
  a sequence (B, S, D) gives per-token tag logits (B, S, num_outputs).
  """
  num_outputs: int
  dropout_rate: float
  hidden: int = 0
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, features: jax.Array, deterministic: bool) -> jax.Array:
    x = nn.Dropout(self.dropout_rate)(features, deterministic=deterministic)
    axis = 'embed'
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, name='hidden',
                           **dense_init(self.initializer_range, ('embed', 'mlp')))(x))
      x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
      axis = 'mlp'
    return nn.Dense(self.num_outputs, name='classifier',
                    **dense_init(self.initializer_range, (axis, None)))(x)
