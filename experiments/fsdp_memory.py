"""FSDP memory evidence: per-device parameter + optimizer memory of the compiled train step.

On 8 forced CPU devices, each config's train step (AdamW, equal weighting) is lowered and
compiled ahead of time on a 1x1x1 mesh (one device) and on its own mesh (scale.py: fsdp=8),
from abstract shapes only (jax.eval_shape: nothing is allocated). Per device it prints the
state's parameter + optimizer bytes (from the shardings), and compiled.memory_analysis()'s
argument bytes (state + batch shard) and temporary bytes, with the FSDP / one-device ratios;
then the FSDP step again under each per-layer rematerialisation policy (config.model.remat).

The decoder LLM shapes (experiments/gpu_llama_mfu.LLAMA: llama_1b is Llama-3.2-1B, llama_8b
Llama-3.1-8B) take the state path only: the parameters and AdamW state as jax.eval_shape
gives them (nothing is allocated), laid out by parallel.mesh.state_shardings under AXIS_RULES
on a 1x1x1 mesh and on fsdp 8, summed per device over each array's shard shape. With
--compile the decoder's train step (AdamW, next-token loss, batch 8 x 2048 split over the 8
devices, remat 'full') is also compiled from those shapes for memory_analysis().

  PYTHONPATH=. python experiments/fsdp_memory.py [bert_large 1b llama_1b llama_8b] [--compile]
"""

import os
import sys

# Before JAX starts: 8 CPU devices in this process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import gpu_llama_mfu
from experiments.configs import scale
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.synthetic import synthetic_batch
from mtl_jax.models.decoder import Decoder, segment_mask
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


def llama_memory(name: str, mesh_config: ml_collections.ConfigDict, devices, compile_step=False,
                 batch: int = 8, seq: int = 2048) -> dict:
  """Per-device bytes of a LLAMA shape's parameters and AdamW state on `mesh_config` over
  `devices` (abstract shapes only); with `compile_step`, the compiled step's memory too."""
  cfg = gpu_llama_mfu.llama_config(name, remat='full')
  init, train_step = gpu_llama_mfu.make_step(cfg)
  tokens = jnp.zeros((1, 1), jnp.int32)
  positions = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: Decoder(cfg).init(
      jax.random.key(0), tokens, positions, segment_mask(tokens + 1, positions))['params'])
  state = jax.eval_shape(init, jax.random.key(0))  # (params, AdamW state)
  mesh, rules = mesh_lib.make_mesh(mesh_config, devices), mesh_lib.axis_rules(mesh_config)
  shardings = mesh_lib.state_shardings(state, boxed, mesh, rules)
  run = {'mesh': dict(mesh.shape), 'parameters': sum(x.size for x in jax.tree.leaves(state[0])),
         'params': shard_bytes(state[0], shardings[0]), 'state': shard_bytes(state, shardings)}
  if compile_step:
    batch_spec = mesh_lib.batch_sharding(mesh, rules, batch)
    step = jax.jit(train_step, in_shardings=(*shardings, batch_spec),
                   out_shardings=(*shardings, mesh_lib.replicated(mesh)), donate_argnums=(0, 1))
    memory = step.lower(*state, jax.ShapeDtypeStruct((batch, seq), jnp.int32)).compile(
        ).memory_analysis()
    run.update(arguments=memory.argument_size_in_bytes, temporaries=memory.temp_size_in_bytes)
  return run


def main_llama(name: str, compile_step: bool):
  one = ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1, 'rules': ()})
  fsdp = ml_collections.ConfigDict({'data': 1, 'fsdp': 8, 'tensor': 1, 'rules': ()})
  single = llama_memory(name, one, jax.devices()[:1], compile_step)
  sharded = llama_memory(name, fsdp, jax.devices(), compile_step)
  cfg = gpu_llama_mfu.LLAMA[name]
  print(f'\n{name}: {single["parameters"] / 1e9:.3f}B parameters ({cfg["num_layers"]} layers, '
        f'{cfg["hidden_size"]} wide, {cfg["num_heads"]}/{cfg["num_kv_heads"]} heads, FFN '
        f'{cfg["intermediate_size"]}, vocab {cfg["vocab_size"]}, '
        f'{"tied" if cfg["tie_word_embeddings"] else "untied"}), float32 + AdamW; per device (GiB):')
  extra = f'{"arguments":>12}{"temporaries":>13}' if compile_step else ''
  print(f'{"mesh":<36}{"params":>10}{"params+optimizer":>18}{extra}')
  for run in (single, sharded):
    extra = (f'{run["arguments"] / GIB:>12.3f}{run["temporaries"] / GIB:>13.3f}'
             if compile_step else '')
    print(f'{str(run["mesh"]):<36}{run["params"] / GIB:>10.3f}{run["state"] / GIB:>18.3f}{extra}')
  extra = (f'{sharded["arguments"] / single["arguments"]:>12.4f}'
           f'{sharded["temporaries"] / single["temporaries"]:>13.4f}' if compile_step else '')
  ratio = sharded['state'] / single['state']
  print(f'{"ratio fsdp / one device":<36}{sharded["params"] / single["params"]:>10.4f}'
        f'{ratio:>18.4f}{extra}   (target <= 0.14: {"met" if ratio <= 0.14 else "NOT met"})')


def main(variants, compile_step=False):
  print(f'jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices')
  for variant in variants:
    if variant in gpu_llama_mfu.LLAMA:
      main_llama(variant, compile_step)
      continue
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
  names = [a for a in sys.argv[1:] if not a.startswith('--')]
  main(names or sorted(scale.SIZES) + ['llama_1b', 'llama_8b'], '--compile' in sys.argv)
