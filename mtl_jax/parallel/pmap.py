"""Data parallelism with jax.pmap: the classic TPU recipe, with explicit collectives.

The state is replicated on every local device, each device takes one slice of the global
batch, and the step (mtl_jax.train.step with `axis_name=AXIS`) sums losses, per-task
gradients and Gram matrices over the devices, so every replica takes the same update as
one device on the whole batch.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.parallel import distributed
from mtl_jax.parallel.backend import Backend, Program, placed

AXIS = 'batch'


def _stacked(devices) -> jax.sharding.NamedSharding:
  """A leading axis with one entry per device of `devices`."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                    jax.sharding.PartitionSpec(AXIS))


def replicate(tree):
  """One copy of `tree` on each local device, stacked on a leading device axis."""
  devices = jax.local_devices()
  return jax.device_put(
      jax.tree.map(lambda x: jnp.broadcast_to(x, (len(devices),) + x.shape), tree),
      _stacked(devices))


def unreplicate(tree):
  """Device 0's copy (all copies are equal)."""
  return jax.tree.map(lambda x: x[0], tree)


def everywhere() -> jax.sharding.NamedSharding:
  """Whole on every device of every process: the layout a pmap state is saved in."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), (AXIS,)),
                                    jax.sharding.PartitionSpec())


def to_global(tree):
  """The replicated state (a copy per local device) as global arrays whole on every device
  of every process, assembled from the local copies in place: orbax saves global arrays
  (and writes a replicated one once), not pmap's per-process copies."""
  def one(x):
    return jax.make_array_from_single_device_arrays(
        x.shape[1:], everywhere(), [shard.data[0] for shard in x.addressable_shards])
  return jax.tree.map(one, tree)


def from_global(tree):
  """to_global's inverse: this process's copy of each global array (a restored
  checkpoint's), one per local device, stacked as pmap takes them."""
  devices = jax.local_devices()

  def one(x):
    shards = {shard.device: shard.data for shard in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + x.shape, _stacked(devices), [shards[d][None] for d in devices])
  return jax.tree.map(one, tree)


def split_batch(batch: dict, num_devices: int) -> dict:
  """(B, ...) -> (num_devices, B / num_devices, ...): device d gets rows [d·B/n, (d+1)·B/n)."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f'The batch of {x.shape[0]} rows does not split evenly over '
                       f'{num_devices} devices; choose a batch size divisible by it.')
    return np.reshape(x, (num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree.map(split, batch)


def pmap_step(train_step: Callable) -> Callable:
  """The per-device `train_step` (built with axis_name=AXIS) pmapped, state donated:
  (replicated state, split batch) -> (replicated state, replicated metrics)."""
  return jax.pmap(train_step, axis_name=AXIS, donate_argnums=0)


def backend(program: Program, batch_size: int) -> Backend:
  """`program` under pmap: each process feeds one contiguous block of every batch, split
  over its local devices; the state is saved whole on every device (orbax saves global
  arrays), and evaluation runs on one device with the parameters on the host."""
  step = pmap_step(program.train_step(axis_name=AXIS))
  num_devices = jax.local_device_count()

  def train_step(state, batch):
    state, metrics = step(state, split_batch(batch, num_devices))
    return state, unreplicate(metrics)

  host_params = lambda state: jax.device_get(state.params)
  return Backend(init=lambda encoder: to_global(replicate(program.create(encoder))),
                 abstract=placed(jax.eval_shape(program.create), everywhere()),
                 from_saved=from_global, to_saved=to_global, step=train_step,
                 rows=distributed.pmap_rows(batch_size), host_params=host_params,
                 eval_params=host_params, predict=jax.jit(program.predict))
