import atexit
import os
import shutil
import tempfile

from xla_flags import with_host_devices

# Set before JAX starts, and inherited by the processes the tests start (the CLI, two hosts).
# Several CPU devices for the multi-device tests.
os.environ['XLA_FLAGS'] = with_host_devices(os.environ.get('XLA_FLAGS', ''), 8)
# Compiling is most of the suite's time: XLA's optimisation passes are skipped (the same
# programs, about half the compile time; JAX_DISABLE_MOST_OPTIMIZATIONS=0 turns them on), and
# a program compiled by one test or process is read by the next from a cache that lives as
# long as the session.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='mtl_jax_tests_xla_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
# The plain runs that equivalence tests compare against (tests/training_equivalence.py).
if 'MTL_JAX_TEST_RUNS' not in os.environ:
  os.environ['MTL_JAX_TEST_RUNS'] = tempfile.mkdtemp(prefix='mtl_jax_tests_runs_')
  atexit.register(shutil.rmtree, os.environ['MTL_JAX_TEST_RUNS'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax
import optax
import pytest

from experiments.configs import default
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.models import pretrained
from mtl_jax.data.pipeline import load_task_data
from mtl_jax.train.loop import create_state
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward
from mtl_jax.train.step import choose_route, make_train_step


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the session: each suite setting is generated once."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def xla_optimised():
  """XLA's optimisation passes on for one test (the suite turns them off above): for a test
  whose time goes into running its programs (a large model, hundreds of steps) rather than
  into compiling them. The same programs, compiled fully."""
  disabled = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', disabled)


@pytest.fixture
def smoke_config(data_dir):
  config = default.get_config('smoke')
  config.data.data_dir = data_dir
  return config


@pytest.fixture
def exact_config(smoke_config):
  """No dropout and no clipping, so a step's update is an exact function of the batch."""
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  smoke_config.optimizer.clip_norm = 0.0
  return smoke_config


def build_step(config, method=None, mode='params', diagnostics=False, sgd_learning_rate=None,
               axis_name=None):
  """(tasks, data, state, model, un-jitted train step) for a config and weighting method.

  With `sgd_learning_rate` the optimizers (the model's and the adversary's) are plain SGD,
  so a step moves the parameters by exactly -lr × the gradient the step formed (AdamW's
  first step would only show its sign). `axis_name` builds the per-device step for pmap.
  """
  config = config_lib.resolved(config)
  tasks = config_lib.validate(config)
  data = load_task_data(config.data, tasks)
  terms = config_lib.build_terms(config, len(data.train_names))
  if sgd_learning_rate is not None:
    terms = {k: t._replace(optimizer=optax.sgd(sgd_learning_rate)) for k, t in terms.items()}
  model = config_lib.build_model(config, tasks, data.vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  optimizer = (make_optimizer(config.optimizer, schedule) if sgd_learning_rate is None
               else optax.sgd(sgd_learning_rate))
  method = method or weighting.get('equal')
  state = create_state(model, optimizer, method, len(tasks), config.seed, config.data.seq_len,
                       mode, config.batch_size, terms, pretrained.load(model))
  forward = Forward(model, tuple(tasks), terms, Collectives(axis_name, config.micro_batches))
  route = choose_route(method, mode, diagnostics, config.sampling.strategy == 'grouped',
                       forward.collectives)
  step = make_train_step(forward, route, method, optimizer, schedule, diagnostics)
  return tasks, data, state, model, step


def pytest_collection_modifyitems(items):
  """Files with slow tests first, then those with the most integration tests, so that
  `--dist loadfile` (with --no-loadscope-reorder, run.sh) hands out the long files while
  other processes still have work, and the short files fill the end."""
  files = {}  # path -> (-slow tests, -integration tests): the sort key
  for item in items:
    slow, integration = files.get(item.path, (0, 0))
    files[item.path] = (slow - bool(item.get_closest_marker('slow')),
                        integration - bool(item.get_closest_marker('integration')))
  items.sort(key=lambda item: files[item.path])
