"""train_and_evaluate(config, workdir): the main job, flat and readable.

mode 'multi' trains all tasks jointly; 'single' trains each task alone; 'both' does the
single-task baselines first, then MTL, and reports Δm% of MTL against them. Each of those
is one fit (mtl_jax.train.loop), in its own folder of the workdir.
"""

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import ml_collections

from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import TaskData, load_task_data, task_view
from mtl_jax.data.text_data import GENERAL, TextData, load_text_data, packing_stats
from mtl_jax.evaluation import summary
from mtl_jax.metrics import HIGHER_IS_BETTER
from mtl_jax.parallel import distributed
from mtl_jax.report import reference, representations
from mtl_jax.tasks import Task
from mtl_jax.train import checkpoint
from mtl_jax.train.loop import fit
from mtl_jax.train.writer import flatten

RUN_FILES = ('metrics.jsonl', 'eval.json')
# Everything a run (and its submission files) writes in its workdir: what overwrite_workdir removes.
RUN_ENTRIES = ('config.json', 'metrics.jsonl', 'eval.json', 'eval_curve.jsonl',
               'representations.npz', 'single', 'finetune', 'base', 'checkpoints',
               'tensorboard', 'submission')
OVERWRITE = 'faults.overwrite_workdir'  # the field that allows replacing another run
# How a run is launched or checked, not what it computes: a resumed run may differ here (a
# new port; a reference file to check a finished run against).
LAUNCH_FIELDS = (OVERWRITE, 'distributed.', 'reference')


def config_changes(stored: dict, config: dict) -> list[str]:
  """'field: stored -> new' for each field whose value differs (LAUNCH_FIELDS aside)."""
  old, new = flatten(stored, '.'), flatten(config, '.')
  missing = '(absent)'
  return [f'{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}'
          for k in sorted(old.keys() | new.keys())
          if not k.startswith(LAUNCH_FIELDS) and old.get(k, missing) != new.get(k, missing)]


def _check_workdir(workdir: str, config: dict, overwrite: bool):
  """Refuses (before anything is written) a workdir that holds a run of another config,
  naming the differing fields, unless `overwrite`. The same config is the same run: it may
  continue there. Process 0 decides, and every process follows its verdict."""
  changes = []
  if distributed.is_writer():
    path = os.path.join(workdir, 'config.json')
    taken = [f for f in RUN_FILES if os.path.exists(os.path.join(workdir, f))]
    if os.path.exists(path):
      with open(path) as f:
        changes = config_changes(json.load(f), config)
    else:
      changes = [f'no config.json beside {", ".join(taken)}'] if taken else []
  if distributed.from_writer(bool(changes) and not overwrite):
    shown = '; '.join(changes[:10]) + (f'; and {len(changes) - 10} more' if len(changes) > 10
                                       else '')
    raise FileExistsError(f'{workdir} already holds a run with another config '
                          f'({shown or "see process 0"}). Choose a new --workdir, or pass '
                          f'--config.{OVERWRITE}=True to replace that run.')
  if not distributed.is_writer():
    return
  if changes:  # replacing another run: none of its results or checkpoints may be resumed
    for entry in RUN_ENTRIES:
      path = os.path.join(workdir, entry)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
  os.makedirs(workdir, exist_ok=True)


def _write_json(path: str, obj):
  if not distributed.is_writer():
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)




def finetune_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of MT-DNN's second stage: each task alone, from the multi-task model, with
  config.finetune's steps and learning rate, and no adversary."""
  ft = config.copy_and_resolve_references()
  ft.num_steps = config.finetune.num_steps
  ft.optimizer.learning_rate = config.finetune.learning_rate or config.optimizer.learning_rate
  ft.optimizer.warmup_steps = config.finetune.warmup_steps
  ft.adversary.enabled = False
  ft.log_every = min(config.log_every, ft.num_steps)
  return ft


PHASES = ('multi', 'single', 'finetune')  # the fits of a run: MTL, and per task STL, fine-tuned
PACKING_STEPS = 50  # a text run reports the packing of its first this many steps' batches


class FitArgs(NamedTuple):
  """fit's first five arguments."""
  config: ml_collections.ConfigDict
  tasks: tuple[Task, ...]
  data: TaskData
  workdir: str
  method: weighting.Method


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of a text run's base phase: the model as it starts, scored, untrained."""
  base = config.copy_and_resolve_references()
  base.num_steps, base.checkpoint.every, base.logging.eval_every = 0, 0, 0
  return base


def fit_args(config: ml_collections.ConfigDict, tasks: Sequence[Task],
             data: TaskData | TextData, workdir: str, phase: str, task: Task | None = None
             ) -> FitArgs:
  """fit's (config, tasks, data, workdir, method) for the run's fit of `phase`: 'multi'
  (all tasks, in workdir), a text run's 'base' (in workdir/base), or `task`'s 'single'
  baseline or 'finetune' (in workdir/<phase>/<task>)."""
  if phase == 'multi':
    return FitArgs(config, tuple(tasks), data, workdir, config_lib.build_weighting(config))
  if phase == 'base':
    return FitArgs(base_config(config), tuple(tasks), data, os.path.join(workdir, 'base'),
                   weighting.get('equal'))
  view = data.view(task.name) if isinstance(data, TextData) else task_view(data, task.name)
  return FitArgs(finetune_config(config) if phase == 'finetune' else config, (task,), view,
                 os.path.join(workdir, phase, task.name), weighting.get('equal'))


def _phase(phase_dir: str, run: Callable[[], dict]) -> dict:
  """task -> metrics of a phase that is not the main fit (a text run's base, a task's STL
  baseline or fine-tuning): its eval.json when an earlier attempt of this run finished the
  phase, else run()'s (then written)."""
  path = os.path.join(phase_dir, 'eval.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)['tasks']
  metrics = run()
  _write_json(path, {'tasks': metrics})
  return metrics


def learnable_alone(tasks: Sequence[Task], data: TaskData, single: dict) -> dict[str, bool]:
  """task -> whether its STL primary metric clears summary.learnable_bar on its primary
  validation split (True where no bar is defined for the metric)."""
  out = {}
  for task in tasks:
    table = next(iter(data.eval[task.name].values()))
    bar = summary.learnable_bar(task.primary_metric, table['labels'][task.name],
                                table['label_masks'][task.name])
    out[task.name] = bar is None or single[task.name][task.primary_metric] > bar
  return out


def beats_base(tasks: Sequence[Task], base: dict, single: dict) -> dict[str, bool]:
  """task -> whether its STL primary metric is better than the base model's (a text run's
  learnability bar: training on the task alone moved it)."""
  out = {}
  for task in tasks:
    metric = task.primary_metric
    gain = single[task.name][metric] - base[task.name][metric]
    out[task.name] = bool(gain > 0 if HIGHER_IS_BETTER[metric] else gain < 0)
  return out


def _only(metrics: dict, names: Sequence[str]) -> dict:
  return {name: metrics[name] for name in names}


def untrained_report(data: TextData, scores: dict, clusters: Mapping[str, Sequence[str]]
                     ) -> dict:
  """eval.json's entries of what a text run never trains on, from `scores` (phase -> a fit's
  scores; of 'single', task -> its STL fit's): 'held_out' (each phase's scores of the
  held-out tasks, their primary metrics, and each of `clusters`' gain of MTL over the base
  model: Δm% over its tasks whose base value is not 0) and 'forgetting' (of the general
  text)."""
  def of(names, pick):
    return {phase: ({task: pick(s, names) for task, s in by.items()} if phase == 'single'
                    else pick(by, names)) for phase, by in scores.items()}
  out = {}
  if data.held_out:
    primary = {name: data.eval[name].task.primary_metric for name in data.held_out}
    out['held_out'] = {'primary_metric': primary, **of(data.held_out, _only)}
    if clusters and 'multi' in scores:
      values = lambda phase, members: {n: scores[phase][n][primary[n]] for n in members}
      out['held_out']['cluster_gain'] = {
          cluster: summary.gain_where_defined(
              values('multi', members), values('base', members),
              {n: HIGHER_IS_BETTER[primary[n]] for n in members})
          for cluster, members in clusters.items()}
  if data.general is not None:
    out['forgetting'] = {'text': data.general.path, **of(GENERAL, lambda s, name: s[name])}
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The main job. Returns what it writes to workdir/eval.json.

  Run again with the same config in the same workdir, it resumes: finished phases are read
  back, the others continue from their last checkpoint (docs/checkpoints.md). Another config
  there is refused unless config.faults.overwrite_workdir, which removes the old run first.
  """
  distributed.initialize(config.distributed)  # before anything touches a device
  config = config_lib.resolved(config)  # what runs, and what config.json records
  tasks = config_lib.validate(config, jax.device_count())
  checkpoint.check_config(config.checkpoint, tasks)
  method = config_lib.build_weighting(config)
  expected = reference.for_config(config)
  # Before the workdir is touched: a task without data fails with nothing written. One
  # tokenisation serves every phase.
  text = config_lib.is_text_run(config)
  data = (load_text_data(config, config.text.held_out) if text
          else load_task_data(config.data, tasks))
  resolved = json.loads(config.to_json_best_effort())
  _check_workdir(workdir, resolved, config.faults.overwrite_workdir)
  _write_json(os.path.join(workdir, 'config.json'), resolved)
  base, single, multi, finetuned = None, None, None, None
  scores = {}  # a text run's: phase -> its fits' whole scores (of 'single': task -> them)
  if text:
    args = fit_args(config, tasks, data, workdir, 'base')
    base = scores['base'] = _phase(args.workdir, lambda: fit(*args, desc='base').metrics)
  if config.mode in ('single', 'both'):
    single = {}
    for task in tasks:
      args = fit_args(config, tasks, data, workdir, 'single', task)
      alone = _phase(args.workdir, lambda: fit(*args, desc=f'STL {task.name}').metrics)
      single[task.name] = alone[task.name]
      scores.setdefault('single', {})[task.name] = alone
  if text and config.weighting.name == 'doremi' and not config.weighting.args.get('reference'):
    method = weighting.get('doremi', **{**config.weighting.args,
                                        'reference': tuple(base[t.name]['loss'] for t in tasks)})
  if config.mode in ('multi', 'both'):
    probe = None if text else functools.partial(representations.probe, tables=data.eval,
                                                per_task=config.logging.representations)
    multi_fit = fit(config, tasks, data, workdir, method, desc='MTL', probe=probe)
    multi = _only(multi_fit.metrics, [t.name for t in tasks])
    if config.finetune.num_steps:
      finetuned = {}
      for task in tasks:
        args = fit_args(config, tasks, data, workdir, 'finetune', task)
        finetuned[task.name] = _phase(args.workdir, lambda: fit(
            *args, desc=f'fine-tune {task.name}', start=multi_fit.params).metrics)[task.name]
    scores['multi'] = multi_fit.metrics

  primary = {t.name: t.primary_metric for t in tasks}
  higher = {t: HIGHER_IS_BETTER[m] for t, m in primary.items()}
  report = {'mode': config.mode, 'multi': multi, 'single': single, 'primary_metric': primary}
  if finetuned is not None:
    report['finetuned'] = finetuned
  if text:
    report['base'] = _only(base, [t.name for t in tasks])
    report.update(untrained_report(data, scores, config.text.clusters))
    steps = range(min(config.num_steps, PACKING_STEPS))
    report['packing'] = packing_stats(data, config.seed, config.batch_size, steps)._asdict()
  if multi is not None and single is not None:
    mtl_primary = {t: multi[t][m] for t, m in primary.items()}
    stl_primary = {t: single[t][m] for t, m in primary.items()}
    report['delta_m'] = summary.delta_m(mtl_primary, stl_primary, higher)
    report['per_task_delta'] = summary.per_task_delta(mtl_primary, stl_primary, higher)
  learnable = None
  if single is not None:
    learnable = (beats_base(tasks, base, single) if text
                 else learnable_alone(tasks, data, single))
    report['learnable_alone'] = learnable
  if expected is not None:
    report['reference_check'] = reference.check(expected, report, resolved)
  _write_json(os.path.join(workdir, 'eval.json'), report)
  if distributed.is_writer():
    print(summary.format_table(multi or single, single if multi else None, primary,
                               learnable=learnable))
    if expected is not None:
      print(reference.format_check(report['reference_check']))
    if finetuned is not None:
      print('\nAfter per-task fine-tuning (the MTL column is the fine-tuned models):')
      print(summary.format_table(finetuned, single, primary))
    if 'held_out' in report and multi is not None:
      print('\nHeld-out tasks, zero-shot:')
      print(summary.format_table(report['held_out']['multi'], report['held_out']['base'],
                                 report['held_out']['primary_metric'], columns=('MTL', 'base')))
    if 'forgetting' in report and multi is not None:
      before, after = report['forgetting']['base'], report['forgetting']['multi']
      print(f'\nGeneral text ({data.general.path}): bits per byte '
            f'{before["bits_per_byte"]:.4f} before, {after["bits_per_byte"]:.4f} after MTL.')
  return report
