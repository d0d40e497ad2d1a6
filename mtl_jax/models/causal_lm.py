"""A decoder LLM whose tasks are all text-to-text (TaskKind.TEXT), learnt through its own LM
head: hard sharing of the whole language model, with no task heads.

A batch row holds packed examples (data/packing.py, data/text_batches.py): the inputs are
the tokens, the segment ids (0 = padding; positions restart in every segment and attention
stays inside it) and the loss mask (which positions' next token is learnt). Every task's
output is the same (B, S) array, each position's NLL of its next token where the loss mask
is set (0 elsewhere), computed in chunks without the (B, S, V) logits
(objectives.language_model.chunked_token_nll). A task's loss is then its masked mean under
its own label mask, the loss mask where the token is the task's, like any other task's
(objectives.losses), so the weighting methods and the gradient routes that take the shared
parameters see the usual loss vector (N,).

Representation mode (gradients with respect to the shared features) is not supported: the
per-task outputs here are no function of a feature that the loss alone reads.
"""

from typing import ClassVar

import jax
import jax.numpy as jnp

from mtl_jax.data.text_batches import INPUT_KEYS
from mtl_jax.models.base import ModelOutput, MultiTaskModel
from mtl_jax.models.decoder import Decoder, segment_mask, segment_positions
from mtl_jax.objectives.language_model import chunked_token_nll
from mtl_jax.tasks import TaskKind


def next_tokens(input_ids: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """(B, S): each position's next token in its own segment (0 at a segment's last token)."""
  same = segment_ids[:, 1:] == segment_ids[:, :-1]
  following = jnp.where(same, input_ids[:, 1:], 0)
  return jnp.concatenate([following, jnp.zeros_like(input_ids[:, :1])], axis=1)


class CausalLM(MultiTaskModel):
  """Packed rows -> every text task's per-position NLL (module docstring). `chunk`: the
  positions whose logits are computed at once."""
  chunk: int = 512

  backbones: ClassVar[tuple[str, ...]] = ('decoder',)
  input_keys: ClassVar[tuple[str, ...]] = INPUT_KEYS

  def setup(self):
    self.encoder = Decoder(self.encoder_config.decoder)

  def validate(self):
    others = [t.name for t in self.tasks if t.kind is not TaskKind.TEXT]
    if others:
      raise ValueError(f'tasks {others} are not text-to-text; a language model learns text '
                       f'tasks only (their templates make them so).')
    if self.chunk < 1:
      raise ValueError(f'chunk must be positive, got {self.chunk}.')

  def __call__(self, input_ids, segment_ids, loss_mask, *, deterministic=True) -> ModelOutput:
    del deterministic  # the decoder has no dropout
    positions = segment_positions(segment_ids)
    mask = segment_mask(segment_ids, positions, self.encoder_config.decoder.sliding_window)
    hidden = self.encoder(input_ids, positions, mask).hidden
    nll = chunked_token_nll(hidden, next_tokens(input_ids, segment_ids), loss_mask,
                            self.encoder.output_projection(), self.chunk)
    return ModelOutput({t.name: nll for t in self.tasks}, jnp.zeros(()), None)
