"""The device mesh and every sharding, from config (MaxText's pattern).

Model parameters carry logical axis names (mtl_jax/models/encoder.py); AXIS_RULES maps
those names onto the mesh axes ('data', 'fsdp', 'tensor'). The train state's shardings
are derived from the parameters' alone: any state leaf named and shaped like a parameter
(the parameter itself, Adam's moments, ...) is sharded like it, the rest is replicated.
"""

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.errors import ConfigError
from mtl_jax.parallel import distributed
from mtl_jax.parallel.backend import Backend, Program, placed

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis -> mesh axes, in order of precedence. An array uses a mesh axis at most once,
# and a logical axis no rule names is not sharded.
AXIS_RULES = (
    ('batch', ('data', 'fsdp')),  # FSDP devices also split the batch: they are data parallel
    ('embed', 'fsdp'),  # FSDP: every weight is split along the model width
    ('heads', 'tensor'),  # tensor parallelism: attention heads (q/k/v outputs, output input)
    ('kv_heads', 'tensor'),  # the decoder's key/value heads, where their count divides it
    ('mlp', 'tensor'),  # ... and the FFN's hidden units
    ('vocab', None),  # vocabularies are seldom divisible; the table is split on 'embed'
    ('head_dim', None),
    ('layers', None),  # the decoder's stacked layers: each device holds a slice of every one
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def axis_rules(mesh_config: ml_collections.ConfigDict) -> Rules:
  """AXIS_RULES with config.mesh.rules' (logical, mesh axes) pairs taking precedence."""
  rules = tuple(tuple(rule) for rule in mesh_config.rules)
  for rule in rules:
    axes = rule[1] if len(rule) == 2 else None
    axes = (axes,) if isinstance(axes, str) else axes or ()
    if len(rule) != 2 or not set(axes) <= set(MESH_AXES):
      raise ConfigError(f'config.mesh.rules: {rule!r} is not a (logical axis, mesh axes) '
                        f'pair over the mesh axes {MESH_AXES}.')
  return rules + AXIS_RULES


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, tensor) sizes; one of them may be -1: the devices the others leave."""
  sizes = [mesh_config[axis] for axis in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if not (isinstance(size, int) and (size >= 1 or size == -1)):
      raise ConfigError(f'config.mesh.{axis}: must be a positive integer or -1, got {size!r}.')
  if sizes.count(-1) > 1:
    raise ConfigError(f'config.mesh: only one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.')
  if -1 in sizes:
    sizes[sizes.index(-1)] = max(num_devices // -math.prod(sizes), 1)
  if math.prod(sizes) != num_devices:
    product = ' x '.join(f'{a} {s}' for a, s in zip(MESH_AXES, sizes))
    raise ConfigError(f'config.mesh: {product} = {math.prod(sizes)} devices, but there are '
                      f'{num_devices}; make the product of mesh.data, mesh.fsdp and '
                      f'mesh.tensor equal the device count.')
  return tuple(sizes)


def run_devices(mesh_config: ml_collections.ConfigDict) -> list[jax.Device]:
  """The devices a run's mesh spans: every device, or this process's first mesh.devices (a
  small run on a host with many devices, each extra one only adding partitions)."""
  count = mesh_config.devices
  if not count:
    return jax.devices()
  if jax.process_count() > 1:
    raise ConfigError(f'config.mesh.devices: {count} devices of one process cannot span a run '
                      f'of {jax.process_count()} processes; set it to 0 (every device).')
  return jax.local_devices()[:mesh_size(mesh_config, jax.local_device_count())]


def mesh_size(mesh_config: ml_collections.ConfigDict, num_devices: int) -> int:
  """How many of a run's `num_devices` its mesh spans: mesh.devices, or all (0)."""
  if mesh_config.devices > num_devices:
    raise ConfigError(f'config.mesh.devices: {mesh_config.devices} exceeds the {num_devices} '
                      f'devices of this run.')
  return mesh_config.devices or num_devices


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: run_devices). Auto axes:
  the shardings are given to jit, and XLA places the collectives."""
  devices = run_devices(mesh_config) if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(shape: dict[str, int], rules: Rules, batch_size: int, field: str):
  """ConfigError unless `batch_size` (set by config field `field`) splits over the devices
  that share a batch on a mesh of `shape` (axis -> size)."""
  spec = nn.logical_to_mesh_axes(('batch',), rules)
  parts = math.prod(shape[a] for a in jax.tree.leaves(tuple(spec)))
  if batch_size % parts:
    raise ConfigError(f'{field}: {batch_size} does not split over the {parts} '
                      f'devices that share the batch ({spec}, mesh {shape}).')


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules, batch_size: int,
                   field: str = 'config.batch_size') -> NamedSharding:
  """Every batch array is split along its leading (batch) axis; `field` names the config
  field that set `batch_size`."""
  check_batch_size(dict(mesh.shape), rules, batch_size, field)
  return NamedSharding(mesh, nn.logical_to_mesh_axes(('batch',), rules))


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def divisible(spec: P, shape: tuple[int, ...], mesh_shape: dict[str, int]) -> P:
  """`spec` with each dimension that its mesh axes do not divide left whole (replicated):
  a model with 3 KV heads on a tensor axis of 2 keeps its key/value heads on every device."""
  def fits(axes, size):
    parts = math.prod(mesh_shape[a] for a in jax.tree.leaves(axes))
    return axes if size % parts == 0 else None
  return P(*(fits(axes, size) for axes, size in zip(tuple(spec), shape)))


def state_shardings(state_shape, boxed_params, mesh: jax.sharding.Mesh, rules: Rules):
  """Shardings for a state pytree (e.g. jax.eval_shape of create_state), from the
  parameters as `init` returns them (boxed with logical axis names; shapes suffice).

  A state leaf whose path ends with a parameter's path and which has that parameter's
  shape (the parameter, its optimizer moments) is sharded like the parameter; everything
  else (step, keys, counts, weighting state) is replicated.
  """
  named = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=_is_box)[0]:
    spec = leaf.get_partition_spec() if _is_box(leaf) else P()
    shape = nn.unbox(leaf).shape
    named[tuple(path)] = (shape, divisible(nn.logical_to_mesh_axes(spec, rules), shape,
                                           dict(mesh.shape)))

  def sharding(path, leaf):
    for start in range(len(path)):
      shape, spec = named.get(tuple(path[start:]), (None, None))
      if shape == leaf.shape:
        return NamedSharding(mesh, spec)
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(sharding, state_shape)


def shard_predict(predict: Callable, mesh: jax.sharding.Mesh, param_shardings,
                  batch: NamedSharding) -> Callable:
  """The predict step jitted for the mesh: the parameters stay sharded as in training, the
  batch is split like a training batch, and the predictions come back whole everywhere."""
  return jax.jit(predict, in_shardings=(param_shardings, batch),
                 out_shardings=replicated(mesh))


def shard_step(step: Callable, mesh: jax.sharding.Mesh, shardings, batch: NamedSharding
               ) -> Callable:
  """The train step jitted for the mesh: the state keeps its shardings and is donated (its
  buffers are reused for the new state), the batch is split, the metrics replicated."""
  return jax.jit(step, in_shardings=(shardings, batch),
                 out_shardings=(shardings, replicated(mesh)), donate_argnums=0)


def placement(create: Callable, boxed_params: Callable, mesh: jax.sharding.Mesh, rules: Rules
              ) -> tuple[Callable, object]:
  """(`create` compiled to make the state in place on the mesh, the state's abstract shapes
  with their shardings), given `boxed_params`() -> the parameters' boxed shapes. The
  shardings come from abstract shapes: nothing is allocated, and a large model is never
  whole on one device. The pretrained encoder is an argument of the compiled `create`, not
  a constant of it."""
  abstract = jax.eval_shape(create)
  shardings = state_shardings(abstract, boxed_params(), mesh, rules)
  return jax.jit(create, out_shardings=shardings), placed(abstract, shardings)


def predictor(predict: Callable, mesh: jax.sharding.Mesh, rules: Rules, param_shardings,
              batch_size: int) -> Callable:
  """(sharded params, a whole evaluation batch on every process) -> predictions on every
  process, computed by all devices: each process feeds the rows its devices hold."""
  sharding = batch_sharding(mesh, rules, batch_size, 'config.eval_batch_size')
  rows = distributed.process_rows(sharding, batch_size)
  sharded = shard_predict(predict, mesh, param_shardings, sharding)
  return lambda params, batch: sharded(params, distributed.global_batch(
      {k: batch[k][rows] for k in INPUT_KEYS}, sharding, batch_size))


def backend(program: Program, mesh: jax.sharding.Mesh, rules: Rules, batch_size: int,
            eval_batch_size: int) -> Backend:
  """`program` on `mesh`: the state made in place in its shardings (and saved in them),
  each process feeding the rows of every batch that its devices hold; evaluation reads the
  sharded parameters."""
  init, abstract = placement(program.create, program.boxed_params, mesh, rules)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  batch = batch_sharding(mesh, rules, batch_size)
  step = shard_step(program.train_step(), mesh, shardings, batch)
  feed = functools.partial(distributed.global_batch, sharding=batch, batch_size=batch_size)
  same = lambda state: state
  return Backend(init=init, abstract=abstract, from_saved=same, to_saved=same,
                 step=lambda state, rows: step(state, feed(rows)),
                 rows=distributed.process_rows(batch, batch_size),
                 host_params=lambda state: distributed.fetch(state.params, mesh),
                 eval_params=lambda state: state.params,
                 predict=predictor(program.predict, mesh, rules, shardings.params,
                                   eval_batch_size))
