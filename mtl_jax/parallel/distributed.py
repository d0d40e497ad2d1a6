"""Several processes (hosts): start-up, each process's share of the batch, global arrays.

Every process runs the same program. Batch k is a pure function of (seed, k), so each
process computes the same global row choice and gathers only the rows its own devices
hold; `global_batch` then joins the processes' pieces into one global array without any
transfer between hosts. Only process 0 writes files.
"""

import jax
import ml_collections
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mtl_jax.errors import ConfigError


def initialize(cfg: ml_collections.ConfigDict):
  """jax.distributed.initialize from config.distributed, before any device is touched.

  Fields left empty (coordinator_address '', num_processes 0, process_id -1) are found by
  JAX itself: JAX_COORDINATOR_ADDRESS, or the cluster's environment (TPU pods, SLURM,
  Open MPI, Kubernetes).
  """
  if not cfg.initialize or jax.distributed.is_initialized():
    return
  if cfg.num_processes < 0 or cfg.process_id < -1:
    raise ConfigError(f'config.distributed: num_processes {cfg.num_processes} and process_id '
                      f'{cfg.process_id} must be >= 0 (0 and -1 mean "from the environment").')
  jax.distributed.initialize(
      coordinator_address=cfg.coordinator_address or None,
      num_processes=cfg.num_processes or None,
      process_id=cfg.process_id if cfg.process_id >= 0 else None,
      initialization_timeout=cfg.timeout_seconds)


def is_writer() -> bool:
  """Whether this process writes logs, reports and progress (process 0 alone does)."""
  return jax.process_index() == 0


def from_writer(flag: bool) -> bool:
  """Process 0's `flag` on every process (a decision only process 0 can make, such as one
  about the files it alone writes)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
  """The rows of the global batch that this process's devices hold under `sharding`, in
  order (the layout jax.make_array_from_process_local_data expects)."""
  held = np.zeros(batch_size, bool)
  for index in sharding.addressable_devices_indices_map((batch_size,)).values():
    held[index[0]] = True
  return np.flatnonzero(held)


def pmap_rows(batch_size: int) -> np.ndarray:
  """This process's rows under pmap: one contiguous block per process, split further over
  its local devices in order (device d of process p holds block p·L + d)."""
  if batch_size % jax.device_count():
    raise ConfigError(f'config.batch_size: {batch_size} does not split over the '
                      f'{jax.device_count()} devices.')
  per_process = batch_size // jax.process_count()
  return np.arange(per_process) + jax.process_index() * per_process


def global_batch(local: dict, sharding: NamedSharding, batch_size: int) -> dict:
  """This process's rows (from `process_rows`) -> global arrays of `batch_size` rows."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x, (batch_size,) + x.shape[1:]),
      local)


def fetch(tree, mesh: jax.sharding.Mesh):
  """A global (possibly sharded across hosts) pytree as numpy arrays on every process."""
  replicated = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)
  return jax.device_get(replicated)
