"""The whole training state as one pytree."""

from typing import Any

import flax
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: steps taken
  params: Any
  opt_state: optax.OptState
  weighting: Any  # the weighting method's state (mtl_jax.weighting)
  rng: jax.Array  # base key; step k's randomness comes from fold_in(rng, k)
  skipped_steps: jax.Array  # int32 scalar: steps whose update was skipped (non-finite)
  adversary_opt_state: optax.OptState = None  # the task discriminator's optimizer, if any
