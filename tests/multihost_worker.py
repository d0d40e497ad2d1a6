"""One process of a multi-process run on this machine (tests/test_multihost.py).

`python tests/multihost_worker.py LAYOUT WORKDIR DATA_DIR PORT PROCESS_ID NUM_PROCESSES`
runs the main job on `config(LAYOUT, DATA_DIR)` with 4 CPU devices in this process.
"""

import logging
import os
import sys

from xla_flags import with_host_devices

LOCAL_DEVICES = 4


def config(layout: str, data_dir: str):
  """A small MTL job; `layout` picks the parallelism and the weighting."""
  from experiments.configs import default  # pylint: disable=import-outside-toplevel
  c = default.get_config('smoke')
  c.data.data_dir = data_dir
  c.mode, c.num_steps, c.log_every = 'multi', 4, 1
  # Two tasks (token tagging, whose label counts differ between the processes' rows, and a
  # regression head) and one layer: what crosses the processes is the same, and the
  # programs each process compiles are smaller (docs/testing.md).
  c.tasks, c.model.num_layers = ('pos', 'similarity'), 1
  c.mesh.devices = 0  # every device of both processes
  c.optimizer.warmup_steps, c.optimizer.schedule = 0, 'constant'  # every step moves params
  c.model.dropout_rate = c.model.attention_dropout_rate = c.model.head_dropout_rate = 0.0
  if layout == 'mesh':  # all three mesh axes, per-task gradients of the global batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.weighting.name = 'pcgrad'
  else:  # pmap, a loss weighter and the adversary
    c.parallelism = 'pmap'
    c.weighting.name = 'uncertainty'
    c.adversary.enabled, c.adversary.weight = True, 0.3
  return c


def main(layout, workdir, data_dir, port, process_id, num_processes):
  os.environ['XLA_FLAGS'] = with_host_devices(os.environ.get('XLA_FLAGS', ''), LOCAL_DEVICES)
  os.environ['JAX_PLATFORMS'] = 'cpu'
  logging.basicConfig(level=logging.INFO, format='%(message)s', force=True)  # rows read
  from mtl_jax.jobs.main import train_and_evaluate  # pylint: disable=import-outside-toplevel
  c = config(layout, data_dir)
  c.distributed.initialize = True
  c.distributed.coordinator_address = f'localhost:{port}'
  c.distributed.num_processes = int(num_processes)
  c.distributed.process_id = int(process_id)
  c.distributed.timeout_seconds = 120
  train_and_evaluate(c, workdir)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main(*sys.argv[1:])
