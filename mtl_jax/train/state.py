"""The whole training state as one pytree."""

from typing import Any

import flax
import jax
import optax


# The layout of TrainState that checkpoints record (meta 'state_format'): 2 since the
# objective terms' parameters and optimizer states left the model's params (`terms`).
STATE_FORMAT = 2


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: steps taken
  params: Any  # the model's
  opt_state: optax.OptState
  weighting: Any  # the weighting method's state (mtl_jax.weighting)
  rng: jax.Array  # base key; step k's randomness comes from fold_in(rng, k)
  skipped_steps: jax.Array  # int32 scalar: steps whose update was skipped (non-finite)
  # Objective terms' parameters and optimizer states (mtl_jax.objectives.terms), by name.
  terms: dict = flax.struct.field(default_factory=dict)
