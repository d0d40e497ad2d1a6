"""Logging, plots and sweep reports: the writer's formats, TensorBoard events read back,
quiet progress off a terminal, the plot files of a tiny run, and Δm% of the report by hand."""

import io
import json
import os
import re
import struct

import numpy as np
import pytest
from PIL import Image

from mtl_jax.jobs import sweep
from mtl_jax.report import plots, tables
from mtl_jax import progress
from mtl_jax.jobs.main import train_and_evaluate
from mtl_jax.train.writer import JsonlWriter, metric_writer, scalars


def read_events(folder: str) -> list:
  """The Event protos of the one event file in `folder` (TFRecord framing: length, its
  CRC, the payload, its CRC)."""
  from tensorboardX.proto import event_pb2
  (name,) = os.listdir(folder)
  with open(os.path.join(folder, name), 'rb') as f:
    data = f.read()
  events, offset = [], 0
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events


def test_jsonl_writer_writes_one_exact_line_per_record():
  out = io.StringIO()
  writer = JsonlWriter(out)
  writer.write({'step': 1, 'loss': 0.5, 'task_weights': {'a': None}})
  writer.write({'step': 2, 'loss': 0.25})
  assert out.getvalue() == ('{"step": 1, "loss": 0.5, "task_weights": {"a": null}}\n'
                            '{"step": 2, "loss": 0.25}\n')


def test_scalars_name_nested_numbers_by_path_and_drop_none():
  record = {'step': 3, 'loss': 1.0, 'task_weights': {'a': 0.5, 'b': None},
            'task_grad_cosine': {'a': {'b': -0.25}}, 'note': 'text'}
  assert scalars(record) == {'loss': 1.0, 'task_weights/a': 0.5,
                             'task_grad_cosine/a/b': -0.25}


def test_tensorboard_events_read_back(tmp_path):
  with metric_writer(str(tmp_path), tensorboard=True) as log:
    log.write({'step': 5, 'loss': 2.0, 'task_losses': {'pos': 1.5}})
    log.write({'step': 10, 'loss': 1.0, 'task_losses': {'pos': 0.75}})
  assert plots.read_jsonl(str(tmp_path / 'metrics.jsonl'))[1]['task_losses'] == {'pos': 0.75}
  got = [(e.step, v.tag, v.simple_value)
         for e in read_events(str(tmp_path / 'tensorboard' / 'metrics')) for v in e.summary.value]
  assert got == [(5, 'loss', 2.0), (5, 'task_losses/pos', 1.5),
                 (10, 'loss', 1.0), (10, 'task_losses/pos', 0.75)]


def test_progress_is_quiet_off_a_terminal_or_when_asked(capsys, monkeypatch):
  monkeypatch.delenv(progress.QUIET_ENV, raising=False)
  assert not progress.shown()  # pytest captures stderr: not a terminal, as in CI
  with progress.bar(3, 'quiet') as bar:
    bar.update(3)
  assert capsys.readouterr().err == ''
  monkeypatch.setattr('sys.stderr.isatty', lambda: True)
  assert progress.shown()
  assert not progress.shown(quiet=True)
  monkeypatch.setenv(progress.QUIET_ENV, '0')
  assert not progress.shown()


def test_throughput_counts_steps_and_tokens_between_updates(monkeypatch):
  clock = iter([10.0, 12.0, 13.0])
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: next(clock))
  speed = progress.Throughput(tokens_per_step=100)
  assert speed.update(4) == {'step_time': 0.5, 'tokens_per_second': 200.0}
  assert speed.update(6) == {'step_time': 0.5, 'tokens_per_second': 200.0}


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A seconds-long MTL run with everything logged: diagnostics, TensorBoard, an evaluation
  every 2 steps and the representation sample."""
  from experiments.configs import default
  config = default.get_config('smoke')
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.mode, config.tasks = 'multi', ('sentiment', 'similarity')
  config.num_steps, config.log_every = 4, 1
  config.weighting.diagnostics = True
  config.logging.tensorboard, config.logging.eval_every = True, 2
  config.logging.representations = 8
  workdir = str(tmp_path_factory.mktemp('run'))
  train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.integration
def test_a_run_logs_throughput_curves_events_and_representations(tiny_run):
  records = plots.read_jsonl(os.path.join(tiny_run, 'metrics.jsonl'))
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert all(r['step_time'] > 0 and r['tokens_per_second'] > 0 for r in records)
  curve = plots.read_jsonl(os.path.join(tiny_run, 'eval_curve.jsonl'))
  assert [r['step'] for r in curve] == [2, 4]
  with open(os.path.join(tiny_run, 'eval.json')) as f:
    assert curve[-1]['tasks'] == json.load(f)['multi']
  tags = {v.tag for e in read_events(os.path.join(tiny_run, 'tensorboard', 'metrics'))
          for v in e.summary.value}
  assert {'tokens_per_second', 'task_grad_cosine/sentiment/similarity'} <= tags
  with np.load(os.path.join(tiny_run, 'representations.npz')) as saved:
    assert saved['start'].shape == saved['end'].shape == (16, 32)
    assert list(saved['task']) == [0] * 8 + [1] * 8
    assert list(saved['task_names']) == ['sentiment', 'similarity']
    assert not np.allclose(saved['start'], saved['end'])


def _assert_png(path):
  assert os.path.getsize(path) > 0
  with Image.open(path) as image:
    image.verify()  # decodes the whole file
    assert image.format == 'PNG'


@pytest.mark.integration
def test_plots_of_a_tiny_run_are_decodable_pngs(tiny_run):
  written = plots.write_plots(tiny_run)
  assert written['task_gain.png'] is None  # an MTL-only run has no STL baselines
  for name in ('curves.png', 'task_weights.png', 'gradient_conflict.png',
               'representations_pca.png'):
    _assert_png(written[name])


def test_task_gain_plot_from_an_eval_json(tmp_path):
  report = {'per_task_delta': {'a': 10.0, 'b': -4.0}, 'delta_m': 3.0,
            'primary_metric': {'a': 'accuracy', 'b': 'mse'}}
  (tmp_path / 'eval.json').write_text(json.dumps(report))
  _assert_png(plots.write_plots(str(tmp_path))['task_gain.png'])


def test_phase_means_average_the_cosines_of_each_third():
  records = [{'step': s, 'task_grad_cosine': {'a': {'a': 1.0, 'b': c}, 'b': {'a': c, 'b': 1.0}}}
             for s, c in [(1, -1.0), (2, 0.0), (3, 0.5), (4, 0.5), (5, 1.0)]]
  tasks, labels, matrices = plots.phase_means(records, phases=3)
  assert tasks == ['a', 'b'] and labels == ['steps 1–2', 'steps 3–4', 'steps 5–5']
  assert [m[0, 1] for m in matrices] == [-0.5, 0.5, 1.0]


def test_pca_keeps_the_direction_of_largest_variance():
  rng = np.random.default_rng(0)
  x = np.outer(rng.normal(size=50), [3.0, 0.0, 4.0]) + 0.01 * rng.normal(size=(50, 3))
  projected = plots.pca_2d(x)
  assert projected.shape == (50, 2)
  assert np.var(projected[:, 0]) > 100 * np.var(projected[:, 1])


# Two tasks, two seeds: accuracy (higher is better) and mse (lower is better).
RESULTS = tables.SweepResults(
    primary={'cls': 'accuracy', 'reg': 'mse'}, higher={'cls': True, 'reg': False},
    stl={0: {'cls': 0.80, 'reg': 2.0}, 1: {'cls': 0.50, 'reg': 4.0}},
    mtl={'equal': {0: {'cls': 0.88, 'reg': 1.0}, 1: {'cls': 0.45, 'reg': 5.0}},
         'pcgrad': {0: {'cls': 0.84, 'reg': 2.5}, 1: {'cls': 0.55, 'reg': 4.0}}},
    step_time={'equal': {0: 0.10, 1: 0.10}, 'pcgrad': {0: 0.15, 1: 0.20}})


def test_delta_m_by_hand():
  # equal, seed 0: cls +10% (0.88 vs 0.80), reg +50% (1.0 vs 2.0, lower is better) -> +30
  # equal, seed 1: cls -10% (0.45 vs 0.50), reg -25% (5.0 vs 4.0)                   -> -17.5
  # pcgrad, seed 0: cls +5%, reg -25% -> -10; seed 1: cls +10%, reg 0% -> +5
  assert tables.delta_m_by_seed(RESULTS, 'equal') == pytest.approx({0: 30.0, 1: -17.5})
  assert tables.delta_m_by_seed(RESULTS, 'pcgrad') == pytest.approx({0: -10.0, 1: 5.0})


def test_markdown_report_by_hand():
  report = tables.markdown(RESULTS, reference='equal', title='T')
  rows = {line.split(' | ')[0][2:]: line for line in report.splitlines() if line.startswith('| ')}
  # Δm% mean ± sample std: equal (30, -17.5) -> 6.25 ± 33.59; step time 100 ms, pcgrad 1.75x.
  assert '| +6.25 ± 33.59 | 100.0 ± 0.0 | 1.00 ± 0.00× |' in rows['equal']
  assert '| -2.50 ± 10.61 | 175.0 ± 35.4 | 1.75 ± 0.35× |' in rows['pcgrad']
  # Means: cls STL 0.65, equal 0.665, pcgrad 0.695 (best); reg STL 3.0 (best), equal 3.0, 3.25.
  assert '**0.6950 ± 0.2051**' in rows['pcgrad'] and '**3.0000 ± 1.4142**' in rows['STL']
  assert tables.best_per_task(RESULTS) == {'cls': 'pcgrad', 'reg': 'STL'}
  assert report.endswith('- cls: pcgrad\n- reg: STL\n')


def _write_run(workdir, method, seed, report, step_times=()):
  path = sweep.run_dir(str(workdir), method, seed)
  os.makedirs(path)
  with open(os.path.join(path, 'eval.json'), 'w') as f:
    json.dump(report, f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps({'step': i, 'step_time': t}) + '\n'
                 for i, t in enumerate(step_times))


def test_sweep_resumes_only_unfinished_runs_and_collects_finished_ones(tmp_path):
  primary = {'cls': 'accuracy', 'reg': 'mse'}
  _write_run(tmp_path, None, 0, {'primary_metric': primary,
                                 'single': {'cls': {'accuracy': 0.8}, 'reg': {'mse': 2.0}}})
  _write_run(tmp_path, 'equal', 0, {'primary_metric': primary,
                                    'multi': {'cls': {'accuracy': 0.88}, 'reg': {'mse': 1.0}}},
             step_times=(5.0, 0.1, 0.3, 0.2))  # the first interval (compilation) is left out
  os.makedirs(sweep.run_dir(str(tmp_path), 'equal', 1))  # cut short: no eval.json
  assert sweep.pending(str(tmp_path), ('equal',), (0, 1)) == [(None, 1), ('equal', 1)]
  results = sweep.collect(str(tmp_path), ('equal',), (0, 1))
  assert results.stl == {0: {'cls': 0.8, 'reg': 2.0}}
  assert results.mtl == {'equal': {0: {'cls': 0.88, 'reg': 1.0}}}
  assert results.step_time == {'equal': {0: pytest.approx(0.2)}}
  assert tables.delta_m_by_seed(results, 'equal') == pytest.approx({0: 30.0})
  assert results.learnable is None  # the baseline's eval.json does not say


def test_the_report_gives_delta_m_over_the_tasks_learnable_alone(tmp_path):
  primary = {'cls': 'accuracy', 'reg': 'mse'}
  for seed, reg_learnt in ((0, True), (1, False)):
    _write_run(tmp_path, None, seed, {
        'primary_metric': primary, 'learnable_alone': {'cls': True, 'reg': reg_learnt},
        'single': RESULTS.stl[seed] and {'cls': {'accuracy': RESULTS.stl[seed]['cls']},
                                         'reg': {'mse': RESULTS.stl[seed]['reg']}}})
    _write_run(tmp_path, 'equal', seed, {
        'primary_metric': primary,
        'multi': {'cls': {'accuracy': RESULTS.mtl['equal'][seed]['cls']},
                  'reg': {'mse': RESULTS.mtl['equal'][seed]['reg']}}})
  results = sweep.collect(str(tmp_path), ('equal',), (0, 1))
  assert results.learnable == {'cls'}  # reg's baseline failed in seed 1
  report = tables.markdown(results, reference='equal')
  # cls alone: seed 0 +10%, seed 1 -10% -> 0.00 ± 14.14; all tasks: +6.25 ± 33.59.
  assert re.search(r'\| \+6\.25 ± 33\.59 \| [+-]0\.00 ± 14\.14 \|', report)
  assert 'Not learnable alone (STL at chance in some seed' in report and ': reg.' in report


def test_run_config_sets_seed_mode_and_method(tmp_path):
  from experiments.configs import sweep as sweep_config
  config = sweep_config.get_config('smoke')
  config.modes = {'pcgrad': 'representation'}
  stl, mtl = sweep.run_config(config, 1, None), sweep.run_config(config, 1, 'pcgrad')
  assert (stl.mode, stl.seed, mtl.mode, mtl.weighting.name) == ('single', 1, 'multi', 'pcgrad')
  assert (mtl.weighting.mode, sweep.run_config(config, 1, 'equal').weighting.mode) == (
      'representation', 'params')  # sweep.modes, else the base's
  assert config.base.mode == 'both'  # the base is left as it was


def test_run_config_of_the_tuned_static_baseline_scores_both_splits():
  from experiments.configs import sweep as sweep_config
  config = sweep.run_config(sweep_config.get_config(), 2, sweep.TUNED_STATIC, (0.5, 2.0))
  assert (config.weighting.name, config.task_weights) == ('static', (0.5, 2.0))
  assert config.data.eval_splits == ('validation', 'test')  # the tuning split is primary


def test_the_sweep_tunes_on_a_split_other_than_the_reported_one(monkeypatch):
  from experiments.configs import sweep as sweep_config
  config = sweep_config.get_config('smoke')
  config.report_split = 'validation'
  with pytest.raises(ValueError, match='tuned_static.split: .* other than the one reported'):
    sweep.check(config)
  monkeypatch.setattr(sweep.weighting, 'names', lambda: ('equal', 'pcgrad', 'tuned_static'))
  with pytest.raises(ValueError, match="A weighting module is named 'tuned_static'"):
    sweep.check(sweep_config.get_config('smoke'))


def _brute_force(objective, n, grid):
  points = [()]
  for _ in range(n):
    points = [(*p, float(x)) for p in points for x in grid]
  return max(points, key=objective)


def test_coordinate_ascent_finds_a_separable_optimum_in_one_pass():
  target = (2.0, 0.5, 1.0)
  objective = lambda w: -sum((a - b) ** 2 + a * b for a, b in zip(w, target))
  grid = (0.5, 1.0, 2.0)
  path, best = sweep.coordinate_ascent(objective, (1.0,) * 3, grid)
  assert best == _brute_force(objective, 3, grid)
  assert len(path) == 1 + 3 * (len(grid) - 1)  # every point once; the start's 1 is reused
  assert path[0] == ((1.0, 1.0, 1.0), objective((1.0, 1.0, 1.0)))
  assert dict(path)[best] == max(v for _, v in path)


def test_coordinate_ascent_is_greedy_and_can_miss_an_interaction():
  # Raising either weight alone hurts; raising both is best. One pass from (1, 1) keeps 1
  # for the first task, then 1 for the second: it never tries (2, 2).
  values = {(1.0, 1.0): 0.0, (2.0, 1.0): -1.0, (1.0, 2.0): -1.0, (2.0, 2.0): 5.0}
  path, best = sweep.coordinate_ascent(values.__getitem__, (1.0, 1.0), (1.0, 2.0))
  assert best == (1.0, 1.0) != _brute_force(values.__getitem__, 2, (1.0, 2.0))
  assert [p for p, _ in path] == [(1.0, 1.0), (2.0, 1.0), (1.0, 2.0)]


def test_training_seconds_add_the_stretches_of_a_resumed_run():
  records = [{'seconds': s} for s in (1.0, 2.5, 0.5, 1.5)]  # resumed after 2.5 s
  assert tables.training_seconds(records) == 4.0


@pytest.mark.integration
def test_a_smoke_sweep_tunes_static_weights_and_reports_the_other_split(data_dir, tmp_path,
                                                                        monkeypatch):
  from experiments.configs import sweep as sweep_config
  config = sweep_config.get_config('smoke')
  config.base.data.data_dir = data_dir
  config.methods, config.seeds = (sweep.TUNED_STATIC,), (0,)
  workdir = str(tmp_path)
  report = sweep.run_sweep(config, workdir)

  with open(os.path.join(workdir, sweep.TUNING, sweep.SEARCH)) as f:
    search = json.load(f)
  assert (search['split'], search['report_split'], search['seed']) == ('validation', 'test', 0)
  best = max(search['path'], key=lambda p: p['delta_m'])
  assert search['weights'] == best['weights'] and search['delta_m'] == best['delta_m']
  assert search['runs'] == len(search['path']) == 3  # (1, 1), (0.5, 1), (w_0, 0.5)
  assert search['training_seconds'] == pytest.approx(
      sum(p['training_seconds'] for p in search['path'])) and search['training_seconds'] > 0
  assert sorted(os.listdir(os.path.join(workdir, sweep.TUNING))) == sorted(
      [sweep.SEARCH] + [os.path.basename(p['run']) for p in search['path']])

  tuned = sweep.run_dir(workdir, sweep.TUNED_STATIC, 0)
  with open(os.path.join(tuned, 'config.json')) as f:
    ran = json.load(f)
  assert (ran['weighting']['name'], ran['task_weights']) == ('static', search['weights'])
  with open(os.path.join(tuned, 'eval.json')) as f:
    multi = json.load(f)['multi']
  with open(os.path.join(sweep.run_dir(workdir, None, 0), 'eval.json')) as f:
    single = json.load(f)['single']
  rows = {line.split(' | ')[0][2:]: line for line in report.splitlines() if line.startswith('| ')}
  for row, metrics in ((sweep.TUNED_STATIC, multi), (tables.STL, single)):
    test, validation = metrics['similarity']['test/pearson'], metrics['similarity']['pearson']
    assert f'{test:.4f} ± 0.0000' in rows[row] and f'{validation:.4f}' not in rows[row]
  assert 'Every figure is on the test split' in report
  assert '## Tuned static weights' in report and 'Cost: 3 runs' in report

  # Nothing is left to train: running it again only rewrites the same report.
  monkeypatch.setattr('mtl_jax.jobs.main.train_and_evaluate', lambda *a: 1 / 0)
  assert sweep.run_sweep(config, workdir) == report


def test_evaluation_shows_progress_on_a_terminal(capsys, monkeypatch):
  from mtl_jax import tasks as task_lib
  from mtl_jax.evaluation.evaluate import evaluate
  monkeypatch.delenv(progress.QUIET_ENV, raising=False)
  monkeypatch.setattr('sys.stderr.isatty', lambda: True)
  task = task_lib.get('sentiment')
  table = {'input_ids': np.zeros((5, 4), np.int32),
           'labels': {'sentiment': np.array([0, 1, 1, 0, 1])},
           'label_masks': {'sentiment': np.ones(5, np.float32)}}
  predict = lambda params, batch: {'sentiment': batch['labels']['sentiment']}  # perfect
  metrics = evaluate(predict, None, (task,), {'sentiment': {'validation': table}}, 2)
  assert metrics['sentiment']['accuracy'] == 1.0
  err = capsys.readouterr().err
  assert 'evaluate' in err and '3/3' in err  # 5 rows in batches of 2
