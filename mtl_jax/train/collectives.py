"""How a slice of the batch's values become the whole batch's.

A step may see only a slice of the global batch: one device's rows under jax.pmap, one
micro-batch's under gradient accumulation, or both. The step's functions take a
`Collectives` and never test for either: on one device with one micro-batch every operation
here is the identity (or a division by 1).
"""

from typing import NamedTuple

import jax


class Collectives(NamedTuple):
  axis_name: str | None = None  # the pmap axis whose devices each hold a slice
  micro_batches: int = 1  # equal slices per device, run one after another

  def total(self, x):
    """Sums over the devices (the identity on one device)."""
    return x if self.axis_name is None else jax.lax.psum(x, self.axis_name)

  def average(self, x):
    """Means over the devices."""
    return x if self.axis_name is None else jax.lax.pmean(x, self.axis_name)

  def share(self, x):
    """A whole-batch mean's share on one slice: its `total`, summed over the micro-batches,
    is the mean (the slices are equal in size)."""
    devices = 1 if self.axis_name is None else jax.lax.psum(1, self.axis_name)
    return x / (devices * self.micro_batches)

  def device_key(self, key: jax.Array) -> jax.Array:
    """`key` folded with this device's index, so each device's rows get their own dropout."""
    return key if self.axis_name is None else jax.random.fold_in(
        key, jax.lax.axis_index(self.axis_name))
