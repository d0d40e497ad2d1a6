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
import pytest

from conftest import build_step
from mtl_jax import weighting
from mtl_jax.config import ConfigError
from mtl_jax.data.pipeline import train_batches
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
  chex.assert_trees_all_equal((after.params, after.opt_state, after.weighting,
                               after.adversary_opt_state),
                              (before.params, before.opt_state, before.weighting,
                               before.adversary_opt_state))
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


@pytest.mark.parametrize('route', ROUTES)
def test_a_nan_loss_skips_the_update_on_every_route(config, route):
  edits, method_name, mode = ROUTES[route]
  for field, value in edits.items():
    section, _, name = field.rpartition('.')
    (config[section] if section else config)[name] = value
  _assert_skipped(*_step(config, method_name, mode, _nan_label))


def test_a_nan_loss_skips_the_update_under_pmap(config):
  _assert_skipped(*_step(config, 'pcgrad', edit=_nan_label, axis_name=pmap_lib.AXIS))


def test_a_finite_step_is_applied_and_not_counted(config):
  before, after, metrics, _ = _step(config, 'pcgrad')
  assert not bool(metrics['nonfinite']) and not metrics['nonfinite_tasks'].any()
  assert int(after.skipped_steps) == 0
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                         after.params, before.params))
  assert all(changed)


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
