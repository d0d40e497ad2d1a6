"""MT-DNN's two stages: the multi-task model, then each task fine-tuned from it; the
single-task view of multi-task data. The GLUE config's smoke run on TFDS mock data is
test_submit.py's `run`."""

import os

import jax
import numpy as np
import pytest

from mtl_jax import config as config_lib
from mtl_jax.data.pipeline import load_task_data, task_view, train_table
from mtl_jax.errors import ConfigError
from mtl_jax.jobs.main import train_and_evaluate
from mtl_jax.train.loop import start_from


def test_task_view_equals_loading_the_task_alone(smoke_config):
  tasks = config_lib.validate(smoke_config)
  data = load_task_data(smoke_config.data, tasks)
  for task in tasks:
    alone = load_task_data(smoke_config.data, (task,))
    view = task_view(data, task.name)
    assert (view.train_names, view.train_sizes, view.tasks) == (
        alone.train_names, alone.train_sizes, alone.tasks)
    rows = np.arange(sum(view.train_sizes))
    jax.tree.map(np.testing.assert_array_equal, train_table(view, rows),
                 train_table(alone, rows))
    jax.tree.map(np.testing.assert_array_equal, view.eval, alone.eval)


def test_start_from_takes_every_leaf_at_its_path():
  multi = {'encoder': {'w': np.ones((2, 3))}, 'head_a': {'b': np.full(2, 2.0)},
           'head_b': {'b': np.zeros(4)}}
  single = {'encoder': {'w': np.zeros((2, 3))}, 'head_a': {'b': np.zeros(2)}}
  started = start_from(single, multi)
  np.testing.assert_array_equal(started['encoder']['w'], multi['encoder']['w'])
  np.testing.assert_array_equal(started['head_a']['b'], multi['head_a']['b'])
  with pytest.raises(ValueError, match=r"\['head_c'\]\['b'\]"):
    start_from({**single, 'head_c': {'b': np.zeros(2)}}, multi)
  with pytest.raises(ValueError, match=r"\['encoder'\]\['w'\]"):
    start_from({'encoder': {'w': np.zeros((3, 3))}}, multi)


@pytest.mark.integration
def test_finetuning_starts_from_the_multi_task_model(smoke_config, tmp_path):
  """With a vanishing learning rate, each fine-tuned model predicts exactly as the MTL model
  did: the second stage starts from the MTL encoder and that task's head (a tagging head,
  and a regression head whose targets are standardised)."""
  smoke_config.tasks = ('pos', 'similarity')
  smoke_config.mode, smoke_config.num_steps = 'multi', 6
  smoke_config.finetune.num_steps = 1
  smoke_config.finetune.learning_rate = 1e-30
  report = train_and_evaluate(smoke_config, str(tmp_path))
  assert set(report['finetuned']) == set(smoke_config.tasks)
  for task, metrics in report['multi'].items():
    for name, value in metrics.items():
      # 1e-5: the one-task model is another XLA program (a Pearson moved by 1.6e-6).
      np.testing.assert_allclose(report['finetuned'][task][name], value, rtol=1e-5,
                                 err_msg=f'{task} {name}')
  assert sorted(os.listdir(tmp_path / 'finetune')) == sorted(smoke_config.tasks)


def test_finetuning_needs_a_multi_task_model(smoke_config):
  smoke_config.mode, smoke_config.finetune.num_steps = 'single', 5
  with pytest.raises(ConfigError, match='finetune.num_steps'):
    config_lib.validate(smoke_config)


def test_a_required_pretrained_folder_is_named(smoke_config):
  smoke_config.model.pretrained = None  # what mtdnn.py leaves when the MiniLM extra is absent
  with pytest.raises(ConfigError, match='model.pretrained.*requirements-minilm'):
    config_lib.validate(smoke_config)
