"""Faults: non-finite steps (mtl_jax.train.step's guard, config.faults.nonfinite), bad
configs, and workdirs that hold another run (docs/faults.md)."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from conftest import build_step
from mtl_jax import weighting
from mtl_jax.errors import ConfigError
from mtl_jax.data.pipeline import train_batches
from mtl_jax.jobs import main as main_job
from mtl_jax.parallel import pmap as pmap_lib
from mtl_jax.train import loop

BAD_TASK = 'similarity'  # a regression task: a NaN label makes its loss NaN


@pytest.fixture
def config(smoke_config):
  """Two tasks and one layer: quick to compile on every route."""
  smoke_config.tasks = ('sentiment', BAD_TASK)
  smoke_config.model.num_layers = 1
  return smoke_config


def _nan_label(batch):
  labels = dict(batch['labels'])
  labels[BAD_TASK] = np.full_like(labels[BAD_TASK], np.nan)
  return {**batch, 'labels': labels}


def _step(config, method_name='equal', mode='params', edit=None, axis_name=None):
  """(state before, state after one jitted step, metrics, task names) on the first batch."""
  method = weighting.get(method_name, **weighting.default_args(method_name))
  # SGD at rate 1: every finite step moves every parameter (AdamW's warmup starts at 0).
  tasks, data, state, _, step = build_step(config, method, mode, sgd_learning_rate=1.0,
                                           axis_name=axis_name)
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  batch = {k: batch[k] for k in loop.TRAIN_KEYS}
  batch = edit(batch) if edit else batch
  before = jax.device_get(state)
  if axis_name is None:
    after, metrics = jax.jit(step)(state, batch)
  else:
    n = jax.local_device_count()
    after, metrics = pmap_lib.pmap_step(step)(pmap_lib.replicate(state),
                                              pmap_lib.split_batch(batch, n))
    after, metrics = pmap_lib.unreplicate(after), pmap_lib.unreplicate(metrics)
  return before, jax.device_get(after), jax.device_get(metrics), [t.name for t in tasks]


def _assert_skipped(before, after, metrics, names):
  chex.assert_trees_all_equal((after.params, after.opt_state, after.weighting, after.terms),
                              (before.params, before.opt_state, before.weighting,
                               before.terms))
  assert int(after.step) == int(before.step) + 1  # the next step takes the next batch
  assert int(after.skipped_steps) == 1 == int(metrics['skipped_steps'])
  assert bool(metrics['nonfinite'])
  assert [n for n, bad in zip(names, metrics['nonfinite_tasks']) if bad] == [BAD_TASK]


ROUTES = {  # name: (config edits, weighting method, mode)
    'loss weighter': ({}, 'uncertainty', 'params'),
    'per-task gradients': ({}, 'pcgrad', 'params'),
    'representation': ({}, 'mgda', 'representation'),
    'grouped': ({'sampling.strategy': 'grouped'}, 'cagrad', 'params'),
    'micro-batches': ({'micro_batches': 2}, 'pcgrad', 'params'),
    'adversary': ({'adversary.enabled': True}, 'equal', 'params'),
}


@pytest.mark.integration
@pytest.mark.parametrize('route', ROUTES)
def test_a_nan_loss_skips_the_update_on_every_route(config, route):
  edits, method_name, mode = ROUTES[route]
  for field, value in edits.items():
    section, _, name = field.rpartition('.')
    (config[section] if section else config)[name] = value
  _assert_skipped(*_step(config, method_name, mode, _nan_label))


@pytest.mark.integration
def test_a_nan_loss_skips_the_update_under_pmap(config):
  _assert_skipped(*_step(config, 'pcgrad', edit=_nan_label, axis_name=pmap_lib.AXIS))


@pytest.mark.integration
def test_a_finite_step_is_applied_and_not_counted(config):
  before, after, metrics, _ = _step(config, 'pcgrad')
  assert not bool(metrics['nonfinite']) and not metrics['nonfinite_tasks'].any()
  assert int(after.skipped_steps) == 0
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                         after.params, before.params))
  assert all(changed)


@pytest.mark.integration
def test_a_nan_parameter_is_caught_in_the_gradient_of_a_loss_weighter(config):
  """A NaN in an encoder weight makes every loss NaN: all tasks are named."""
  tasks, data, state, _, step = build_step(config, weighting.get('equal'),
                                           sgd_learning_rate=1.0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[(0,) * x.ndim].set(jnp.nan) if 'embed' in jax.tree_util.keystr(path)
      else x, state.params)
  state = state.replace(params=params)
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  after, metrics = jax.jit(step)(state, {k: batch[k] for k in loop.TRAIN_KEYS})
  assert bool(metrics['nonfinite']) and int(after.skipped_steps) == 1
  assert metrics['nonfinite_tasks'].all()
  chex.assert_trees_all_equal(after.params, state.params)


def _run_config(config):
  """A quick MTL run of the two-task config: three steps, each one logged."""
  config.mode = 'multi'
  config.num_steps, config.log_every = 3, 1
  return config


def _records(workdir):
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture
def diverging(config):
  """A learning rate of 1e30: step 1 is finite, its update makes every later loss non-finite."""
  config = _run_config(config)
  config.optimizer.learning_rate, config.optimizer.schedule = 1e30, 'constant'
  config.optimizer.warmup_steps = 0
  return config


@pytest.mark.integration
def test_stop_names_the_tasks_and_step_and_logs_nothing_after(diverging, tmp_path):
  diverging.faults.nonfinite = 'stop'
  with pytest.raises(loop.NonFiniteError,
                     match=r"Step 2: .*task\(s\) \['sentiment', 'similarity'\] is NaN or Inf"):
    main_job.train_and_evaluate(diverging, str(tmp_path))
  assert [r['step'] for r in _records(tmp_path)] == [1]
  assert not (tmp_path / 'eval.json').exists()


@pytest.mark.integration
def test_skip_counts_the_skipped_steps_in_the_log(diverging, tmp_path):
  main_job.train_and_evaluate(diverging, str(tmp_path))
  records = _records(tmp_path)
  assert [r['skipped_steps'] for r in records] == [0, 1, 2]
  assert 'nonfinite_tasks' not in records[0]
  assert records[2]['nonfinite_tasks'] == ['sentiment', 'similarity']


BAD_CONFIGS = {  # field: (value, message)
    'batch_size': ('a', "config.batch_size: must be an integer, got 'a'"),
    'num_steps': (True, 'config.num_steps: must be an integer, got True'),
    'tasks': ('sentiment', "config.tasks: must be a tuple of str, got 'sentiment'"),
    'mesh.fsdp': (3, 'config.mesh: data 1 x fsdp 3 x tensor 1 = 3 devices, but there are 8'),
    'mesh.tensor': ('2', "config.mesh.tensor: must be an integer, got '2'"),
    'task_weights': ((1.0,), 'config.task_weights: has 1 entries for 2 tasks'),
    'data.local.mine': (dict(format='jsonl', paths=dict(validation='/nonexistent.jsonl'),
                             text_fields=('text',), label_field='label', regression=True),
                        "config.data.local.mine.paths: a task needs a 'train' file"),
}


@pytest.mark.parametrize('field', BAD_CONFIGS)
def test_a_bad_config_fails_naming_its_field_with_nothing_written(config, field, tmp_path):
  """On a copy without ConfigDict's type checks (which refuse some of these values on
  assignment, as the command line does): validate is what catches them then."""
  value, message = BAD_CONFIGS[field]
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  if field == 'mesh.fsdp':
    config.mesh.data, config.mesh.devices = 1, 0
  if field.startswith('data.local'):
    config.tasks = ('sentiment', 'mine')
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError, match=message):
    main_job.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_missing_local_file_is_named(config, tmp_path):
  config.data.local.mine = dict(format='jsonl', paths=dict(train=str(tmp_path / 'nope.jsonl')),
                                text_fields=('text',), label_field='label', regression=True)
  config.tasks = ('mine',)
  with pytest.raises(ConfigError, match=r'config.data.local.mine.paths.train: no file .*nope'):
    main_job.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_an_unknown_field_on_the_command_line_is_named(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, '-m', 'mtl_jax.train', '--config',
       os.path.join(root, 'experiments/configs/default.py:smoke'), '--config.no_such_key=1',
       '--workdir', str(tmp_path / 'run')], cwd=root, capture_output=True, text=True,
      timeout=120, env={**os.environ, 'PYTHONPATH': root})
  assert result.returncode == 2
  assert "the config has no field 'no_such_key'" in result.stderr.splitlines()[-1]
  assert not (tmp_path / 'run').exists()


@pytest.mark.integration
def test_a_workdir_of_another_config_is_refused_unless_asked(config, tmp_path):
  config = _run_config(config)
  main_job.train_and_evaluate(config, str(tmp_path))
  files = lambda: {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  written = files()
  config.num_steps = 2
  with pytest.raises(FileExistsError, match=r'num_steps: 3 -> 2.*overwrite_workdir=True'):
    main_job.train_and_evaluate(config, str(tmp_path))
  assert files() == written
  config.faults.overwrite_workdir = True
  main_job.train_and_evaluate(config, str(tmp_path))
  # The old run's step-3 checkpoint was removed, not resumed.
  assert [r['step'] for r in _records(tmp_path)] == [1, 2]
  assert '3' not in os.listdir(tmp_path / 'checkpoints')


def test_config_changes_name_each_differing_field():
  stored = {'a': 1, 'b': {'c': [1, 2], 'd': 'x'}, 'faults': {'overwrite_workdir': False}}
  new = {'a': 1, 'b': {'c': [1, 3], 'e': 0}, 'faults': {'overwrite_workdir': True}}
  assert main_job.config_changes(stored, new) == [
      'b.c: [1, 2] -> [1, 3]', "b.d: 'x' -> '(absent)'", "b.e: '(absent)' -> 0"]
  assert main_job.config_changes(stored, stored) == []
  launched = {**stored, 'distributed': {'coordinator_address': 'host:1', 'process_id': 1}}
  assert main_job.config_changes(stored, launched) == []  # a resumed job may get a new port
