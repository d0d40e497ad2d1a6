"""Hard parameter sharing: one shared backbone (the encoder or the decoder), one head per task
(the reference)."""

import jax
import jax.numpy as jnp

from mtl_jax.models import backbone
from mtl_jax.models.base import ModelOutput, MultiTaskModel, feature, sentence_key


class HardSharing(MultiTaskModel):
  """inputs -> ModelOutput. `encode` maps inputs to the features the heads read (by
  `representation_key`, plus the last layer's sentence feature for the adversary); `decode`
  runs the heads.
  """

  def setup(self):
    self.encoder = backbone.module(self.encoder_config, self.reads_lower_layers())
    self.setup_heads()

  def encode(self, input_ids, segment_ids, attention_mask, *, deterministic=True
             ) -> dict[str, jax.Array]:
    features = self.encoder(input_ids, segment_ids, attention_mask,
                            deterministic=deterministic)
    keys = set(self.keys().values())
    if self.shared_features:
      keys.add(sentence_key(self.encoder_config))
    return {key: feature(key, features) for key in sorted(keys)}

  def decode(self, representation: dict[str, jax.Array], *, deterministic=True
             ) -> ModelOutput:
    features = {name: representation[key] for name, key in self.keys().items()}
    shared = (representation[sentence_key(self.encoder_config)] if self.shared_features
              else None)
    return ModelOutput(self.head_outputs(features, deterministic), jnp.zeros(()), shared)
