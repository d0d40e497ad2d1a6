"""The whole training state as one pytree."""

from typing import Any

import flax
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: steps taken
  params: Any
  opt_state: optax.OptState
  rng: jax.Array  # base key; each step's dropout key is fold_in(rng, step)
