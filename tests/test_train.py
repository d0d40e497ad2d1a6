"""The train step and the main job: determinism, learning, compiled once, end to end."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import load_task_data, train_batches
from mtl_jax.evaluation import summary
from mtl_jax.jobs import main as main_job
from mtl_jax.jobs import submit
from mtl_jax.train.loop import fit
from conftest import build_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['task_losses'] for line in f]


# The smoke variant's main job through the command line, on two of its tasks (a tagging and
# a regression head: 3 fits, not 5) with one checkpoint per fit, at its end. Shared by the
# end-to-end test and the other-seed test below.
SMOKE_TASKS = ('pos', 'similarity')


def _smoke_command(data_dir, workdir, *flags):
  return [sys.executable, '-m', 'mtl_jax.train', '--config',
          os.path.join(ROOT, 'experiments/configs/default.py:smoke'), '--workdir', str(workdir),
          f'--config.data.data_dir={data_dir}', f'--config.tasks={SMOKE_TASKS!r}',
          '--config.checkpoint.every=20', *flags]


@pytest.fixture(scope='module')
def smoke_run(data_dir, tmp_path_factory):
  """(workdir, the finished command's result) of the smoke variant's main job (mode 'both')."""
  workdir = tmp_path_factory.mktemp('smoke') / 'run'
  result = subprocess.run(_smoke_command(data_dir, workdir), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


@pytest.mark.slow
def test_another_seed_gives_other_losses(smoke_run, tmp_path):
  """The smoke run's MTL fit again in this process, its config.json with only the seed
  changed: other losses at every logged step. The other half, that two runs with one seed
  are identical (here and in another process), is test_checkpoint's: its resume tests
  compare a second run, in the same process and in another, bitwise."""
  workdir, _ = smoke_run
  config = submit.run_config(str(workdir))
  config.seed += 1
  tasks = config_lib.validate(config)
  data = load_task_data(config.data, tasks)
  fit(*main_job.fit_args(config, tasks, data, str(tmp_path), 'multi'), desc='MTL')
  first, other = _losses(workdir), _losses(tmp_path)
  assert len(first) == len(other) == 4
  assert all(a[t] != b[t] for a, b in zip(first, other) for t in SMOKE_TASKS), (first, other)


@pytest.mark.integration
def test_step_compiles_once_and_learns_a_fixed_batch(smoke_config):
  smoke_config.optimizer.learning_rate = 3e-3
  smoke_config.optimizer.schedule = 'constant'
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  tasks, data, state, _, step = build_step(smoke_config)
  step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
  batches = train_batches(data, smoke_config.sampling, 0, 16, 0, 3)
  first_batch = next(batches)
  for batch in batches:  # new data, same shapes: no retrace
    state, _ = step(state, batch)
  losses = []
  for _ in range(120):
    state, metrics = step(state, first_batch)
    losses.append(np.asarray(metrics['task_losses']))
    chex.assert_tree_all_finite(metrics)
  assert int(state.step) == 122
  assert (losses[-1] < 0.5 * losses[0]).all(), (losses[0], losses[-1])


@pytest.mark.integration
def test_static_weights_scale_the_gradient(smoke_config):
  """λ enters linearly: doubling every weight doubles the loss and the gradient norm."""
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  smoke_config.optimizer.clip_norm = 0.0
  results = []
  for scale in (1.0, 2.0):
    tasks, data, state, _, step = build_step(
        smoke_config, weighting.get('static', weights=(scale, 0.5 * scale, scale, 0.0)))
    batch = next(train_batches(data, smoke_config.sampling, 0, 16, 0, 1))
    _, metrics = jax.jit(step)(state, batch)
    results.append(metrics)
  np.testing.assert_allclose(results[1]['loss'], 2 * results[0]['loss'], rtol=1e-5)
  np.testing.assert_allclose(results[1]['grad_norm'], 2 * results[0]['grad_norm'], rtol=1e-4)
  losses, weights = results[0]['task_losses'], results[0]['task_weights']
  np.testing.assert_allclose(results[0]['loss'], float(jnp.dot(losses, weights)), rtol=1e-6)


@pytest.mark.slow
def test_main_job_smoke_variant_end_to_end(smoke_run, data_dir):
  workdir, result = smoke_run
  tasks = SMOKE_TASKS
  report = json.loads((workdir / 'eval.json').read_text())
  assert set(report['multi']) == set(report['single']) == set(tasks)
  primary = report['primary_metric']
  higher = {t: m != 'mse' for t, m in primary.items()}
  mtl = {t: report['multi'][t][m] for t, m in primary.items()}
  stl = {t: report['single'][t][m] for t, m in primary.items()}
  assert report['delta_m'] == pytest.approx(summary.delta_m(mtl, stl, higher))
  # Similarity's bar is a Pearson of 0.5, out of reach in 20 steps; pos is not learnable
  # alone only if its STL token accuracy is at most the majority tag's rate + 0.05.
  assert report['learnable_alone']['similarity'] is (stl['similarity'] > 0.5)
  assert set(report['learnable_alone']) == set(tasks)
  for name in tasks:
    assert (workdir / 'single' / name / 'eval.json').exists()
    assert os.listdir(workdir / 'single' / name / 'checkpoints') == ['20']
  assert os.listdir(workdir / 'checkpoints') == ['20']
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [5, 10, 15, 20]
  assert json.loads((workdir / 'config.json').read_text())['tasks'] == list(tasks)
  assert 'Δm%' in result.stdout and 'similarity' in result.stdout
  # The same workdir with another config: refused, naming the field; nothing written is lost.
  before = (workdir / 'eval.json').read_text()
  again = subprocess.run(_smoke_command(data_dir, workdir, '--config.num_steps=10'), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode != 0 and 'already holds a run' in again.stderr
  assert 'num_steps: 20 -> 10' in again.stderr
  assert (workdir / 'eval.json').read_text() == before


@pytest.mark.slow
def test_bad_config_fails_before_any_work_in_one_line_with_exit_status_2(tmp_path):
  cmd = [sys.executable, '-m', 'mtl_jax.train', '--config',
         os.path.join(ROOT, 'experiments/configs/default.py:smoke'),
         '--workdir', str(tmp_path / 'w'), '--config.task_weights=(1.0, 2.0)']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert result.stderr.splitlines()[-1].startswith(
      'FATAL config error: config.task_weights: has 2 entries for 4 tasks')
  assert not (tmp_path / 'w').exists()
