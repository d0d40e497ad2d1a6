"""FSDP memory evidence: per-device parameter + optimizer memory of the compiled train step.

On 8 forced CPU devices, each config's train step (AdamW, equal weighting) is lowered and
compiled ahead of time on a 1x1x1 mesh (one device) and on its own mesh (scale.py: fsdp=8),
from abstract shapes only (jax.eval_shape: nothing is allocated). Per device it prints the
state's parameter + optimizer bytes (from the shardings), and compiled.memory_analysis()'s
argument bytes (state + batch shard) and temporary bytes, with the FSDP / one-device ratios;
then the FSDP step again under each per-layer rematerialisation policy (config.model.remat).

  PYTHONPATH=. python experiments/fsdp_memory.py [bert_large 1b]
"""

import os
import sys

# Before JAX starts: 8 CPU devices in this process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import numpy as np

from experiments.configs import scale
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.bench import synthetic_batch
from mtl_jax.models.encoder import REMAT
from mtl_jax.parallel import mesh as mesh_lib
from mtl_jax.train import gradients
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward
from mtl_jax.train.loop import state_program
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.step import make_train_step

GIB = 2.0 ** 30


def shard_bytes(shapes, shardings) -> int:
  """Bytes one device holds of the arrays `shapes` laid out by `shardings`."""
  return sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
             for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))


def compile_step(config, devices) -> dict:
  """Per-device memory of the compiled step for config.mesh over `devices`."""
  config = config_lib.resolved(config)
  tasks = config_lib.validate(config)
  model = config_lib.build_model(config, tasks, config.model.vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  optimizer = make_optimizer(config.optimizer, schedule)
  method = weighting.get('equal')
  mesh, rules = mesh_lib.make_mesh(config.mesh, devices), mesh_lib.axis_rules(config.mesh)
  create, boxed = state_program(model, optimizer, method, len(tasks), config.seed,
                                config.data.seq_len)
  _, state = mesh_lib.placement(create, boxed, mesh, rules)  # shapes only: nothing allocated
  shardings = jax.tree.map(lambda a: a.sharding, state)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), synthetic_batch(
      tasks, config.batch_size, config.data.seq_len, config.model.vocab_size))
  forward = Forward(model, tuple(tasks), {}, Collectives())
  train_step = make_train_step(forward, gradients.loss_weighted, method, optimizer, schedule)
  step = mesh_lib.shard_step(train_step, mesh,
                             shardings, mesh_lib.batch_sharding(mesh, rules, config.batch_size))
  memory = step.lower(state, batch).compile().memory_analysis()
  trained = (state.params, state.opt_state)
  return {'mesh': dict(mesh.shape),
          'parameters': sum(x.size for x in jax.tree.leaves(state.params)),
          'state': shard_bytes(trained, (shardings.params, shardings.opt_state)),
          'arguments': memory.argument_size_in_bytes,
          'temporaries': memory.temp_size_in_bytes}


def main(variants):
  print(f'jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices')
  for variant in variants:
    config = scale.get_config(variant)
    one = config.copy_and_resolve_references()
    one.mesh.data, one.mesh.fsdp, one.mesh.tensor = 1, 1, 1
    single = compile_step(one, jax.devices()[:1])
    sharded = compile_step(config, jax.devices())
    print(f'\n{variant}: {single["parameters"] / 1e6:.0f}M parameters, batch '
          f'{config.batch_size} x {config.data.seq_len}; per device (GiB):')
    print(f'{"mesh":<36}{"params+optimizer":>18}{"arguments":>12}{"temporaries":>13}')
    for run in (single, sharded):
      print(f'{str(run["mesh"]):<36}{run["state"] / GIB:>18.3f}{run["arguments"] / GIB:>12.3f}'
            f'{run["temporaries"] / GIB:>13.3f}')
    print(f'{"ratio fsdp / one device":<36}{sharded["state"] / single["state"]:>18.4f}'
          f'{sharded["arguments"] / single["arguments"]:>12.4f}'
          f'{sharded["temporaries"] / single["temporaries"]:>13.4f}')
    for policy in REMAT:
      if policy != config.model.remat:
        remat = config.copy_and_resolve_references()
        remat.model.remat = policy
        run = compile_step(remat, jax.devices())
        print(f'{"  remat " + policy:<36}{run["state"] / GIB:>18.3f}'
              f'{run["arguments"] / GIB:>12.3f}{run["temporaries"] / GIB:>13.3f}'
              f'  (temporaries x{run["temporaries"] / sharded["temporaries"]:.3f} of no remat)')


if __name__ == '__main__':
  main(sys.argv[1:] or sorted(scale.SIZES))
