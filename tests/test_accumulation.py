"""Gradient accumulation (config.micro_batches): k micro-batches give the same losses and
parameters as the whole batch at once, step after step.

The truth is the step on the whole batch. Per-task losses are masked means over the whole
batch, so micro-batches with unequal label counts must not be averaged as means.
"""

import jax
import numpy as np
import pytest

from conftest import build_step
from training_equivalence import assert_same_training, plain_run, run, use_shared_private
from mtl_jax import config as config_lib
from mtl_jax.data.pipeline import train_batches
from mtl_jax.errors import ConfigError
from mtl_jax.parallel import pmap as pmap_lib


@pytest.fixture
def config(smoke_config):
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  smoke_config.optimizer.warmup_steps = 0  # full-size steps from the first, so params move
  smoke_config.optimizer.schedule = 'constant'
  return smoke_config


def _assert_same_run(config, method_name, micro_batches, pmapped=False):
  config.micro_batches = micro_batches
  config_lib.validate(config)
  assert_same_training(plain_run(config, method_name),
                       run(config, method_name, pmapped=pmapped))


@pytest.mark.integration
def test_micro_batches_have_unequal_label_counts(config):
  """Guards the point of the tests: a mean of the micro-batches' means would be wrong."""
  _, data, *_ = build_step(config)
  batch = next(train_batches(data, config.sampling, 0, config.batch_size, 0, 1))
  counts = pmap_lib.split_batch(batch['label_masks'], 4)
  per_slice = np.stack([np.asarray(c).reshape(4, -1).sum(1) for c in counts.values()])
  assert (per_slice != per_slice[:, :1]).any()


@pytest.mark.integration
@pytest.mark.parametrize('method_name,micro_batches', [
    # 4 slices (their label counts differ: the test above), one method per route: the
    # loss-weighted backward and the per-task VJPs; 2 slices for a loss weighter with
    # parameters of its own (uncertainty's log-variances).
    ('equal', 4), ('mgda', 4), ('uncertainty', 2)])
def test_micro_batches_equal_the_whole_batch(config, method_name, micro_batches):
  _assert_same_run(config, method_name, micro_batches)


@pytest.mark.integration
@pytest.mark.parametrize('method_name', ['equal', 'mgda'])
def test_micro_batches_with_the_adversary(config, method_name):
  config.adversary.enabled = True
  config.adversary.hidden = 8
  _assert_same_run(config, method_name, 2)


@pytest.mark.integration
def test_micro_batches_with_a_parameter_penalty(config):
  config.model.architecture, config.model.args = 'soft', {'strength': 0.1}
  _assert_same_run(config, 'equal', 2)


@pytest.mark.integration
def test_micro_batches_under_pmap(config):
  """8 devices × 2 micro-batches of one row each."""
  config.batch_size = 2 * jax.local_device_count()
  _assert_same_run(config, 'mgda', 2, pmapped=True)


@pytest.mark.integration
@pytest.mark.parametrize('method_name,pmapped', [('mgda', False), ('equal', True)])
def test_micro_batches_with_shared_private(config, method_name, pmapped):
  """Per-task gradients on one device; a loss weighter under pmap."""
  use_shared_private(config)
  config.batch_size = 2 * jax.local_device_count() if pmapped else config.batch_size
  _assert_same_run(config, method_name, 2, pmapped)


def test_bad_micro_batches_are_config_errors(smoke_config):
  smoke_config.micro_batches = 3
  with pytest.raises(ConfigError, match='config.micro_batches: batch_size 16'):
    config_lib.validate(smoke_config)
  smoke_config.micro_batches = 2
  smoke_config.weighting.name, smoke_config.weighting.mode = 'mgda', 'representation'
  with pytest.raises(ConfigError, match="config.micro_batches: .*mode 'params'"):
    config_lib.validate(smoke_config)
