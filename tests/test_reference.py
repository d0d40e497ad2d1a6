"""A run's figures against documented seeds (mtl_jax.report.reference): the spread, z and
verdicts, configs that differ, the reference command, and the main job's check end to end."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import default
from mtl_jax.errors import ConfigError
from mtl_jax.evaluation import summary
from mtl_jax.report import reference
from mtl_jax.jobs.main import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIMARY = {'pos': 'token_accuracy', 'similarity': 'pearson'}


def _run(seed: int, stl, mtl, learnable=None, **fields) -> reference.Run:
  """A seed of a two-task run: stl, mtl are (pos, similarity) primary metrics; `fields`
  replace top-level config.json fields."""
  metrics = lambda values: {t: {m: v} for (t, m), v in zip(PRIMARY.items(), values)}
  report = {'mode': 'both', 'primary_metric': PRIMARY, 'single': metrics(stl),
            'multi': metrics(mtl), 'learnable_alone': learnable}
  config = {'seed': seed, 'mode': 'both', 'num_steps': 600, 'reference': '',
            'data': {'data_dir': f'/data/{seed}', 'seed': 0},
            'logging': {'progress': seed % 2 == 0}, **fields}
  return reference.Run(f'W{seed}', report, config)


LEARNABLE = {'pos': True, 'similarity': False}
RUNS = [_run(0, (0.99, 0.20), (0.97, 0.25), LEARNABLE),
        _run(1, (0.98, 0.30), (0.96, 0.22), LEARNABLE),
        _run(2, (0.97, 0.10), (0.98, 0.31), LEARNABLE)]


def _delta_m(run, tasks=tuple(PRIMARY)):
  value = lambda phase, t: run.report[phase][t][PRIMARY[t]]
  return summary.delta_m({t: value('multi', t) for t in tasks},
                         {t: value('single', t) for t in tasks}, {t: True for t in tasks})


def test_spread_is_the_mean_and_the_sample_std():
  values = [0.31, 0.47, 0.52, 0.40]
  s = reference.spread(values)
  assert s['mean'] == pytest.approx(np.mean(values), abs=1e-15)
  assert s['std'] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
  assert (s['n'], s['values']) == (4, values)


def test_marks_within_and_beyond_two_std_and_at_std_zero():
  ref = {'mean': 0.5, 'std': 0.25, 'n': 3}  # binary fractions: z is exact
  assert reference.mark(0.875, ref) == {'value': 0.875, 'mean': 0.5, 'std': 0.25, 'n': 3,
                                        'z': 1.5, 'verdict': 'within 2 std'}
  assert reference.mark(1.0, ref)['verdict'] == 'within 2 std'  # |z| = 2: within
  assert reference.mark(-0.25, ref)['z'] == -3.0
  assert reference.mark(-0.25, ref)['verdict'] == 'differs'
  # Every seed gave 0.304: z is undefined; within only up to reference.SAME.
  same = {'mean': 0.304, 'std': 0.0, 'n': 3}
  assert reference.mark(0.304 + 1e-9, same)['z'] is None
  assert reference.mark(0.304 + 1e-9, same)['verdict'] == 'within 2 std'
  assert reference.mark(0.306, same)['verdict'] == 'differs'


def test_a_reference_holds_each_figures_spread_over_the_seeds():
  ref = reference.build(RUNS)
  assert ref['seeds'] == [0, 1, 2] and ref['format'] == reference.FORMAT
  assert ref['primary_metric'] == PRIMARY
  for phase in ('single', 'multi'):
    for task, metric in PRIMARY.items():
      values = [r.report[phase][task][metric] for r in RUNS]
      assert ref['tasks'][task][phase]['mean'] == pytest.approx(np.mean(values))
      assert ref['tasks'][task][phase]['std'] == pytest.approx(np.std(values, ddof=1))
      assert ref['tasks'][task][phase]['n'] == 3
  assert ref['delta_m']['values'] == pytest.approx([_delta_m(r) for r in RUNS])
  assert ref['delta_m']['std'] == pytest.approx(np.std([_delta_m(r) for r in RUNS], ddof=1))
  # Similarity is not learnable alone: a second Δm% over pos only.
  assert ref['delta_m_learnable']['tasks'] == ['pos']
  assert ref['delta_m_learnable']['values'] == pytest.approx([_delta_m(r, ('pos',))
                                                              for r in RUNS])
  # What the seeds share: not the seed, the data folder, what is only shown, nor the field.
  assert ref['config'] == {'mode': 'both', 'num_steps': 600, 'data.seed': 0}
  assert 'delta_m_learnable' not in reference.build(
      [_run(s, (0.9, 0.8), (0.8, 0.7), {'pos': True, 'similarity': True}) for s in (0, 1)])


def test_runs_of_other_configs_or_repeated_seeds_make_no_reference():
  other = _run(3, (0.9, 0.2), (0.9, 0.2), num_steps=300, mode='both')
  with pytest.raises(ValueError, match=r'W3 is not the experiment of W0.*num_steps: 600 -> 300'):
    reference.build([*RUNS, other])
  with pytest.raises(ValueError, match=r'seed\(s\) \[1\] repeat'):
    reference.build([*RUNS, RUNS[1]._replace(name='W1 again')])
  with pytest.raises(ValueError, match='at least 2 seeds'):
    reference.build(RUNS[:1])


def test_a_check_marks_each_figure_of_the_run():
  ref = reference.build(RUNS)
  run = _run(7, (0.5, 0.21), (0.97, 0.26), LEARNABLE)
  result = reference.check(ref, run.report, run.config)
  assert result['seeds'] == [0, 1, 2] and result['seed'] == 7
  for phase in ('single', 'multi'):
    for task, metric in PRIMARY.items():
      values = [r.report[phase][task][metric] for r in RUNS]
      z = (run.report[phase][task][metric] - np.mean(values)) / np.std(values, ddof=1)
      assert result['tasks'][task][phase]['z'] == pytest.approx(z)
      assert result['tasks'][task][phase]['verdict'] == ('within 2 std' if abs(z) <= 2
                                                         else 'differs')
  assert result['tasks']['pos']['single']['verdict'] == 'differs'  # 0.5 against 0.98 ± 0.01
  assert result['delta_m']['value'] == pytest.approx(_delta_m(run))
  assert result['delta_m_learnable']['value'] == pytest.approx(_delta_m(run, ('pos',)))
  text = reference.format_check(result)
  assert 'Against the documented seeds 0, 1, 2' in text and 'one of them' not in text
  assert 'Beyond 2 std of the documented seeds: pos STL' in text
  assert len(text.splitlines()) == 1 + 1 + 4 + 2 + 2  # heading, header, figures, Δm%, notes


def test_a_run_of_another_config_gets_the_differing_fields_not_verdicts():
  ref = reference.build(RUNS)
  run = _run(0, (0.99, 0.2), (0.97, 0.25), num_steps=20, mode='both',
             logging={'progress': False}, reference='ref.json')
  result = reference.check(ref, run.report, run.config)
  assert result == {'seeds': [0, 1, 2], 'seed': 0, 'config_differs': ['num_steps: 600 -> 20']}
  assert 'config differs from theirs in num_steps: 600 -> 20' in reference.format_check(result)


def test_only_the_primary_eval_split_is_part_of_the_config():
  """Scoring another split besides changes nothing a run computes; another primary does."""
  both = reference.shared_config({'data': {'eval_splits': ['validation', 'test']}})
  assert both == reference.shared_config({'data': {'eval_splits': ['validation']}})
  assert both != reference.shared_config({'data': {'eval_splits': ['test', 'validation']}})


def _write_run(folder, report, config):
  os.makedirs(folder)
  for name, content in (('eval.json', report), ('config.json', config)):
    with open(os.path.join(folder, name), 'w') as f:
      json.dump(content, f)


def test_runs_are_read_from_a_workdir_or_a_sweeps_stl_and_mtl_folders(tmp_path):
  run = RUNS[0]
  _write_run(tmp_path / 'both', run.report, run.config)
  assert reference.read_run(str(tmp_path / 'both')) == run._replace(name=str(tmp_path / 'both'))
  stl = {**run.report, 'mode': 'single', 'multi': None}
  mtl = {**run.report, 'mode': 'multi', 'single': None, 'learnable_alone': None}
  _write_run(tmp_path / 'stl', stl, {**run.config, 'mode': 'single'})
  _write_run(tmp_path / 'equal', mtl, {**run.config, 'mode': 'multi',
                                       'weighting': {'name': 'equal'}})
  pair = reference.read_run(f'{tmp_path / "stl"},{tmp_path / "equal"}')
  assert pair.report == {k: run.report[k] for k in pair.report}
  assert pair.config == {**run.config, 'weighting': {'name': 'equal'}}
  with pytest.raises(ValueError, match=r'stl/eval.json: a run of mode .single. has no MTL'):
    reference.read_run(str(tmp_path / 'stl'))
  with pytest.raises(FileNotFoundError, match=r'missing/eval.json: no such file'):
    reference.read_run(str(tmp_path / 'missing'))
  _write_run(tmp_path / 'seed1', mtl, {**run.config, 'mode': 'multi', 'seed': 1})
  with pytest.raises(ValueError, match='differ in more than mode and weighting: seed: 0 -> 1'):
    reference.read_run(f'{tmp_path / "stl"},{tmp_path / "seed1"}')


def test_the_command_names_the_bad_file(tmp_path, capsys):
  _write_run(tmp_path / 'W0', RUNS[0].report, RUNS[0].config)
  with pytest.raises(SystemExit):
    reference.main(['--out', str(tmp_path / 'r.json'), str(tmp_path / 'W0'),
                    str(tmp_path / 'W1')])
  assert f'{tmp_path / "W1" / "eval.json"}: no such file' in capsys.readouterr().err
  assert not (tmp_path / 'r.json').exists()


def test_a_missing_or_malformed_reference_fails_before_any_work(smoke_config, tmp_path):
  (tmp_path / 'bad.json').write_text('{"format": 1')
  (tmp_path / 'old.json').write_text('{"format": 0}')
  for name, error in (('none.json', 'no such file'), ('bad.json', 'not valid JSON'),
                      ('old.json', 'not a reference file of format 1')):
    smoke_config.reference = str(tmp_path / name)
    with pytest.raises(ConfigError, match=f'config.reference: {tmp_path / name}: {error}'):
      train_and_evaluate(smoke_config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()
  smoke_config.mode = 'multi'  # one phase: nothing to mark, and the file is not read
  assert reference.for_config(smoke_config) is None


# End to end: a reference from finished tiny main jobs (one task, one layer, 2 steps). Two
# seeds, not three: a seed takes 15-30 s on the 2-core machine, and the bound below holds
# for any n (at n = 2 with equality).
SEEDS = (0, 1)
TINY = {'tasks': ('similarity',), 'model.num_layers': 1, 'num_steps': 2, 'log_every': 1,
        'checkpoint.every': 2, 'logging.representations': 0, 'logging.eval_every': 0}


@pytest.fixture(scope='module')
def documented(data_dir, tmp_path_factory):
  """A folder of the finished seeds (seed_<s>) and the reference written from them."""
  root = tmp_path_factory.mktemp('documented')
  for seed in SEEDS:
    config = default.get_config('smoke')
    config.update_from_flattened_dict({**TINY, 'data.data_dir': data_dir, 'seed': seed})
    train_and_evaluate(config, str(root / f'seed_{seed}'))
  reference.main(['--out', str(root / 'reference.json'),
                  *(str(root / f'seed_{s}') for s in SEEDS)])
  return root


def _read(folder, name):
  return json.loads((folder / name).read_text())


@pytest.mark.integration
def test_a_documented_seed_lies_within_n_minus_1_over_root_n_std(documented):
  ref = reference.load(str(documented / 'reference.json'))
  reports = [_read(documented / f'seed_{s}', 'eval.json') for s in SEEDS]
  values = [r['single']['similarity']['pearson'] for r in reports]
  assert ref['tasks']['similarity']['single']['std'] == pytest.approx(np.std(values, ddof=1))
  # With the sample std, one of n values lies within (n - 1)/sqrt(n) std of their mean.
  bound = (len(SEEDS) - 1) / math.sqrt(len(SEEDS))
  for seed, report in zip(SEEDS, reports):
    result = reference.check(ref, report, _read(documented / f'seed_{seed}', 'config.json'))
    marks = [result['delta_m'], *result['tasks']['similarity'].values()]
    assert all(m['verdict'] == 'within 2 std' for m in marks)
    assert all(abs(m['z']) <= bound + 1e-9 for m in marks if m['std'] > 0)
    assert result['tasks']['similarity']['single']['std'] > 0  # the seeds do differ


@pytest.mark.slow
def test_the_main_job_prints_and_writes_its_check(documented, data_dir):
  """Given a finished seed's workdir, the main job with --config.reference reads the run back
  (no training), prints the check after its table and writes it into eval.json."""
  workdir = documented / 'seed_0'
  log = (workdir / 'metrics.jsonl').read_text()
  flags = [f'--config.{k}={v}' for k, v in {**TINY, 'data.data_dir': data_dir}.items()]
  path = str(documented / 'reference.json')
  result = subprocess.run(
      [sys.executable, '-m', 'mtl_jax.train', '--config',
       os.path.join(ROOT, 'experiments/configs/default.py:smoke'), '--workdir', str(workdir),
       *flags, f'--config.reference={path}'], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f'Against the documented seeds {", ".join(map(str, SEEDS))} (config.reference; '
          f'this run: seed 0, one of them)') in result.stdout
  assert result.stdout.index('Δm%') < result.stdout.index('Against the documented seeds')
  report = _read(workdir, 'eval.json')
  expected = reference.check(reference.load(path), report, _read(workdir, 'config.json'))
  assert report['reference_check'] == expected
  assert reference.format_check(expected) in result.stdout
  assert (workdir / 'metrics.jsonl').read_text() == log
