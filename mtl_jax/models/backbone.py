"""The backbone a sharing architecture wraps: the BERT-style Encoder (models/encoder.py) or
the Llama-layout Decoder (models/decoder.py), selected by config.model.backbone.

An architecture holds its backbone's config in `MultiTaskModel.encoder_config`: an
EncoderConfig, or a DecoderBackboneConfig for the decoder. Both answer what the heads ask of
it (models/base.py: pooling, pooler, pair_features, pair_head_hidden, num_layers,
pretrained), and `module` builds the matching Flax module. Both modules take
(input_ids, segment_ids, attention_mask) and return an EncoderOutput, whose
hidden_states[d] are the token states at depth d, so the heads, hierarchical depths, the
adversary and the gradient methods read either backbone the same way.

How the decoder is read. A training row holds one example, right-padded: the row's real
tokens form one causal segment (segment ids = the attention mask, positions 0, 1, ...), and
the two sentences of a pair task are that one row in order (the input's token-type ids are
not read). A sentence or pair task's head reads the state of the row's LAST real token (the
only one that has seen the whole input: pooling 'last'); a tagging task's head reads every
token's state. hidden_states follows Hugging Face's output_hidden_states: [0] the token
embeddings, [d] for 0 < d < L layer d's output (the residual stream), [L] the final RMSNorm's
output (what the LM head reads). Lower layers are kept only when a task reads one
(`keep_states`).
"""

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp

from mtl_jax.models.decoder import Decoder, DecoderConfig, segment_mask
from mtl_jax.models.encoder import Encoder, EncoderConfig, EncoderOutput

BACKBONES = ('encoder', 'decoder')  # config.model.backbone
LAST = 'last'  # the decoder's sentence feature: the state of a row's last real token


@dataclasses.dataclass(frozen=True)
class DecoderBackboneConfig:
  """The decoder as an architecture's backbone, and how task heads read it: the last real
  token's state for a sentence (or sentence-pair) task, no pooler, no pair features."""
  decoder: DecoderConfig
  pretrained: str = ''  # a GGUF file or Hugging Face folder to start from; '' = random init

  name: ClassVar[str] = 'decoder'
  pooling: ClassVar[str] = LAST
  pooler: ClassVar[bool] = False
  pair_features: ClassVar[bool] = False
  pair_head_hidden: ClassVar[int] = 0

  @property
  def num_layers(self) -> int:
    return self.decoder.num_layers

  @property
  def hidden_size(self) -> int:
    return self.decoder.hidden_size


def backbone_name(cfg: EncoderConfig | DecoderBackboneConfig) -> str:
  """'encoder' or 'decoder' (BACKBONES): which backbone `cfg` configures."""
  return cfg.name if isinstance(cfg, DecoderBackboneConfig) else 'encoder'


def rope_scaling_pairs(scaling: Mapping) -> tuple:
  """A Hugging Face rope_scaling dict (config.model.rope_scaling) as DecoderConfig holds it:
  sorted (key, value) pairs, lists as tuples; () for none."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in dict(scaling).items()))


def last_index(attention_mask: jax.Array) -> jax.Array:
  """(..., S) -> (...): the index of each row's last real token (0 for a row of padding)."""
  index = jnp.arange(attention_mask.shape[-1])
  return jnp.max(jnp.where(attention_mask > 0, index, 0), axis=-1)


def last_slice(x: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """(B, S, ...) -> (B, 1, ...): each row's entry at its last real token."""
  index = last_index(attention_mask).reshape((-1, 1) + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def last_token(sequence: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """(B, S, D) token states -> (B, D): the state of each row's last real token. With
  causal attention it is the one state that has read the whole row."""
  return last_slice(sequence, attention_mask)[:, 0]


def row_inputs(attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(positions, mask) of right-padded rows, one example each: positions 0..S-1, and
  query i sees the real tokens 0..i (padding sees nothing)."""
  segments = (attention_mask > 0).astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(segments.shape[-1]), segments.shape)
  return positions, segments


class DecoderBackbone(Decoder):
  """The Decoder called as the Encoder is: (input_ids, segment_ids, attention_mask) ->
  EncoderOutput (module docstring). Its parameters are exactly a Decoder's."""

  def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True
               ) -> EncoderOutput:
    del deterministic  # the decoder has no dropout
    positions, segments = row_inputs(attention_mask)
    out = super().__call__(input_ids, positions,
                           segment_mask(segments, positions, self.cfg.sliding_window))
    layers = self.cfg.num_layers
    inner = ([out.layer_states[i] for i in range(layers - 1)] if self.keep_states
             else [None] * (layers - 1))
    embedded = self.embed(input_ids).astype(self.cfg.dtype)
    return EncoderOutput((embedded, *inner, out.hidden), None, attention_mask, segment_ids)


def module(cfg: EncoderConfig | DecoderBackboneConfig, keep_states: bool = False):
  """The backbone's Flax module. `keep_states`: every layer's states are read, not only the
  last layer's (the Encoder always keeps them)."""
  if isinstance(cfg, DecoderBackboneConfig):
    return DecoderBackbone(cfg.decoder, keep_states=keep_states)
  return Encoder(cfg)
