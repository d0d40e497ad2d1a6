"""One-step goldens: for each route through the train step, a stored state, a batch and the
state and metrics one step makes of them (tests/data/step_goldens/<route>.npz).

They pin the step's behaviour across refactors of the centre (issue 16): the test rebuilds
each route's step with today's code, feeds it the stored state and batch, and compares every
leaf of the new state and the metrics. Write them again only for a deliberate change of
behaviour, and say why in the commit:

  PYTHONPATH=. python -m tests.step_goldens  # writes tests/data/step_goldens/*.npz

A golden's state is the route's own after STEPS_BEFORE steps from initialisation, so that
the optimizer's moments, the weighting state and the discriminator are not at their start.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from xla_flags import with_host_devices  # noqa: E402

os.environ['XLA_FLAGS'] = with_host_devices(os.environ.get('XLA_FLAGS', ''), 8)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import default  # noqa: E402
from mtl_jax import config as config_lib  # noqa: E402
from mtl_jax.data.pipeline import load_task_data, scaled_tasks, train_batches  # noqa: E402
from mtl_jax.train import loop  # noqa: E402

DIRECTORY = os.path.join(os.path.dirname(__file__), 'data', 'step_goldens')
STEPS_BEFORE = 2
RNG = 'rng'  # the state's typed key, stored as its key data

# route -> config overrides on default.py's smoke config (dotted field -> value).
SHARED_PRIVATE = {'model.architecture': 'shared_private', 'model.num_layers': 1,
                  'model.args': {'orthogonality': 1.0, 'private_hidden_size': 8,
                                 'private_heads': 2},
                  'adversary.enabled': True, 'adversary.hidden': 8}
ROUTES = {
    'loss_weighter': {'weighting.name': 'uncertainty'},
    # per-task gradients for the diagnostics; the heads still get the weighter's λ
    'loss_weighter_diagnostics': {'weighting.name': 'uncertainty',
                                  'weighting.diagnostics': True},
    'task_params': {'weighting.name': 'gradvac'},
    'grouped': {'weighting.name': 'pcgrad', 'sampling.strategy': 'grouped'},
    'representation': {'weighting.name': 'imtl', 'weighting.mode': 'representation'},
    'adversary_reversal': {**SHARED_PRIVATE, 'adversary.optimization': 'reversal'},
    'adversary_alternating': {**SHARED_PRIVATE, 'adversary.optimization': 'alternating',
                              'weighting.name': 'mgda'},
    'pmap': {'parallelism': 'pmap', 'weighting.name': 'gradvac'},
    'pmap_adversary': {**SHARED_PRIVATE, 'parallelism': 'pmap',
                       'weighting.name': 'uncertainty'},
    'micro_batches': {'micro_batches': 2, 'weighting.name': 'uncertainty'},
    'micro_batches_task_params': {**SHARED_PRIVATE, 'micro_batches': 2,
                                  'weighting.name': 'gradvac',
                                  'adversary.optimization': 'alternating'},
    'fsdp': {'mesh.data': 2, 'mesh.fsdp': 2, 'weighting.name': 'gradvac'},
}
MESH_DEVICES = {'fsdp': 4}  # a mesh route's device count (default 1)


def route_config(route: str):
  config = default.get_config('smoke')
  config.mesh.data, config.mesh.devices = 1, 0  # build() hands the backend its devices
  config.model.pair_head_hidden = 16  # small goldens: the default 512 makes most of the bytes
  for field, value in ROUTES[route].items():
    *parents, name = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    if name not in node:  # a ConfigDict takes a new field silently
      raise KeyError(f'{route}: the config has no field {field}.')
    node[name] = value
  return config


def build(route: str, data_dir: str):
  """(the route's backend, whose step is the one `fit` runs; its batches)."""
  config = route_config(route)
  config.data.data_dir = data_dir
  devices = (jax.devices() if config.parallelism == 'pmap'
             else jax.devices()[:MESH_DEVICES.get(route, 1)])
  tasks = config_lib.validate(config, len(devices))
  data = load_task_data(config.data, tasks)
  tasks = scaled_tasks(tasks, data)
  _, program = loop.program(config, tasks, data, config_lib.build_weighting(config))
  batches = lambda: ({k: b[k] for k in loop.TRAIN_KEYS} for b in train_batches(
      data, config.sampling, config.seed, config.batch_size, 0, STEPS_BEFORE + 1))
  return config_lib.build_backend(config, program, devices), batches


def to_step(backend, host_state):
  """A state of host arrays in the layout the backend's step takes."""
  shardings = jax.tree.map(lambda a: a.sharding, backend.abstract)
  return backend.from_saved(jax.device_put(host_state, shardings))


def to_host(backend, tree):
  """The step's state (or its metrics) as host arrays."""
  return jax.device_get(backend.to_saved(tree))


def flat(tree) -> dict[str, np.ndarray]:
  """{key path: array} of a state or metrics pytree (typed keys as their key data)."""
  def leaf(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)
  return {jax.tree_util.keystr(p): leaf(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def paths(tree) -> list[str]:
  """The key paths of `tree`'s leaves (arrays or abstract shapes), as `flat` names them."""
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def unflat(like, stored: dict[str, np.ndarray]):
  """`like`'s pytree (arrays or abstract shapes) with every leaf read from `stored` by its
  key path. A typed key (the state's dropout key) is rebuilt with the loop's implementation."""
  def leaf(path, x):
    key = jax.tree_util.keystr(path)
    if key not in stored:
      raise KeyError(f'The golden has no leaf {key}.')
    value = stored[key]
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(value, impl=loop.DROPOUT_KEY_IMPL)
    return value
  return jax.tree_util.tree_map_with_path(leaf, like)


def write(route: str, data_dir: str):
  backend, batches = build(route, data_dir)
  batches = batches()
  state = backend.from_saved(backend.init(None))
  for _ in range(STEPS_BEFORE):
    state, _ = backend.step(state, next(batches))
  state, batch = to_host(backend, state), next(batches)
  before = flat(state)  # before the step donates the state's buffers (a key stays on device)
  new_state, metrics = backend.step(to_step(backend, state), batch)
  arrays = {**{f'state{k}': v for k, v in before.items()},
            **{f'batch{k}': v for k, v in flat(batch).items()},
            **{f'new_state{k}': v for k, v in flat(to_host(backend, new_state)).items()},
            **{f'metrics{k}': v for k, v in flat(jax.device_get(metrics)).items()}}
  os.makedirs(DIRECTORY, exist_ok=True)
  np.savez_compressed(os.path.join(DIRECTORY, f'{route}.npz'), **arrays)


def part(stored, prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: stored[k] for k in stored.files if k.startswith(prefix + '[')
          or k.startswith(prefix + '.')}


if __name__ == '__main__':
  import tempfile
  with tempfile.TemporaryDirectory() as tfds_dir:
    for name in (sys.argv[1:] or ROUTES):
      write(name, tfds_dir)
      print('wrote', name)
