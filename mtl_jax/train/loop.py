"""train_and_evaluate(config, workdir): the main job, flat and readable.

mode 'multi' trains all tasks jointly; 'single' trains each task alone; 'both' does the
single-task baselines first, then MTL, and reports Δm% of MTL against them.
"""

import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.data.pipeline import (TaskData, load_task_data, scaled_tasks, task_view,
                                   train_batches)
from mtl_jax.evaluation import reference, summary
from mtl_jax.evaluation.evaluate import evaluate
from mtl_jax.evaluation.metrics import HIGHER_IS_BETTER
from mtl_jax.models import pretrained
from mtl_jax.objectives import terms as terms_lib
from mtl_jax.objectives.terms import Term
from mtl_jax.parallel import distributed
from mtl_jax.parallel import mesh as mesh_lib
from mtl_jax.parallel import pmap as pmap_lib
from mtl_jax.report import representations
from mtl_jax.tasks import Task
from mtl_jax.train import checkpoint, progress
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.state import TrainState
from mtl_jax.train.gradients import task_gradient_like
from mtl_jax.train.step import make_predict_step, make_train_step
from mtl_jax.train.writer import flatten, metric_writer

RUN_FILES = ('metrics.jsonl', 'eval.json')
# Everything a run (and its submission files) writes in its workdir: what overwrite_workdir removes.
RUN_ENTRIES = ('config.json', 'metrics.jsonl', 'eval.json', 'eval_curve.jsonl',
               'representations.npz', 'single', 'finetune', 'checkpoints', 'tensorboard',
               'submission')
EVAL_CURVE = 'eval_curve'  # workdir/eval_curve.jsonl: {'step', 'tasks': task -> metrics}
OVERWRITE = 'faults.overwrite_workdir'  # the field that allows replacing another run
# How a run is launched or checked, not what it computes: a resumed run may differ here (a
# new port; a reference file to check a finished run against).
LAUNCH_FIELDS = (OVERWRITE, 'distributed.', 'reference')
TRAIN_KEYS = (*INPUT_KEYS, 'labels', 'label_masks', 'domain')
# The wall-clock entries of a metrics.jsonl record: the rest is a pure function of the run.
TIMING_KEYS = ('seconds', 'step_time', 'tokens_per_second')
# Logged when the run has them: the architecture's penalty and the adversary's state.
SCALAR_TERMS = ('penalty', 'adversary_loss', 'adversary_accuracy', 'adversary_weight')


def _example_inputs(model, seq_len: int) -> jax.Array:
  inputs = model.example_inputs(1, seq_len)
  return jnp.zeros(inputs.shape, inputs.dtype)


def init_params(model, seed: int, seq_len: int) -> dict:
  """The model's initial parameters, boxed with their logical axis names (nn.unbox gives the
  arrays; mtl_jax.parallel.mesh the shardings)."""
  dummy = _example_inputs(model, seq_len)
  return model.init(jax.random.key(seed), dummy, dummy, dummy)['params']


def create_state(model, optimizer, method, num_tasks: int, seed: int, seq_len: int,
                 mode: str = 'params', batch_size: int = 1,
                 terms: dict[str, Term] | None = None, encoder: dict | None = None
                 ) -> TrainState:
  """`mode` and `batch_size` shape the state of methods that keep per-task gradients.
  `terms`: the objective terms, whose parameters start from keys folded from the seed's.
  `encoder`: the pretrained encoder's parameters (pretrained.load(model)), which replace the
  encoder's random init; give them whenever model.encoder_config.pretrained is set."""
  # Dropout bits from XLA's RngBitGenerator: on CPU, threefry bits cost more than the small
  # default model's layers. Still a pure function of (seed, step).
  dropout_key = jax.random.key(seed, impl='unsafe_rbg')
  params = pretrained.initialise(model, nn.unbox(init_params(model, seed, seq_len)), encoder)
  grads_like = (task_gradient_like(model, params, mode, batch_size, seq_len)
                if method.needs is weighting.Needs.GRADS else None)
  output = None
  if terms:  # the shapes of what the terms read
    dummy = _example_inputs(model, seq_len)
    output = jax.eval_shape(lambda: model.apply({'params': params}, dummy, dummy, dummy))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    weighting=weighting.init_state(method, num_tasks, grads_like),
                    rng=dropout_key, skipped_steps=jnp.zeros((), jnp.int32),
                    terms=terms_lib.init_states(terms or {}, jax.random.key(seed), output))


def state_layout(mesh: jax.sharding.Mesh, rules: mesh_lib.Rules, model, optimizer, method,
                 num_tasks: int, seed: int, seq_len: int, mode: str = 'params',
                 batch_size: int = 1, terms: dict[str, Term] | None = None
                 ) -> tuple[Callable[[], TrainState], TrainState]:
  """(a function of the pretrained encoder (or None) that runs create_state with these
  arguments, the state's shardings). The shardings come from abstract shapes: nothing is
  allocated."""
  create = lambda encoder=None: create_state(model, optimizer, method, num_tasks, seed,
                                             seq_len, mode, batch_size, terms, encoder)
  boxed_params = jax.eval_shape(lambda: init_params(model, seed, seq_len))
  return create, mesh_lib.state_shardings(jax.eval_shape(create), boxed_params, mesh, rules)


def sharded_state(mesh: jax.sharding.Mesh, rules: mesh_lib.Rules, model, *args, **kwargs
                  ) -> tuple[TrainState, TrainState]:
  """(create_state's state, its shardings), for state_layout's arguments. The state is
  created in place on the mesh (jit with out_shardings): a large model is never whole on
  one device."""
  create, shardings = state_layout(mesh, rules, model, *args, **kwargs)
  return jax.jit(create, out_shardings=shardings)(pretrained.load(model)), shardings


class Fitted(NamedTuple):
  metrics: dict[str, dict[str, float]]  # task -> evaluation metrics
  params: Any  # the trained parameters, as numpy arrays on every process


def start_from(params, start):
  """`params` with every leaf replaced by `start`'s at the same path (e.g. a multi-task
  model's encoder and this task's head, for fine-tuning). Each leaf must be there, with the
  same shape: an architecture whose single-task parameters are not a part of its multi-task
  ones (stacked per-task copies) cannot be fine-tuned this way."""
  given = dict(jax.tree_util.tree_flatten_with_path(start)[0])
  missing = []

  def take(path, leaf):
    if path in given and np.shape(given[path]) == leaf.shape:
      return given[path]
    missing.append(jax.tree_util.keystr(path))
    return leaf

  params = jax.tree_util.tree_map_with_path(take, params)
  if missing:
    raise ValueError(f'The starting parameters lack (or mis-shape) {", ".join(missing[:5])}'
                     f'{" ..." if len(missing) > 5 else ""}.')
  return params


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


def _log_record(step: int, metrics: dict, tasks: Sequence[Task], seconds: float,
                throughput: dict[str, float]) -> dict:
  m = jax.device_get(metrics)
  record = {'step': step, 'seconds': round(seconds, 3), **throughput}
  for key in ('loss', 'grad_norm', 'learning_rate', *SCALAR_TERMS):
    if key in m:
      record[key] = float(m[key])
  names = [t.name for t in tasks]

  def by_task(values):  # NaN (a weight a gradient aggregator does not define) -> null
    return {n: None if np.isnan(v) else float(v) for n, v in zip(names, np.asarray(values))}

  record['skipped_steps'] = int(m['skipped_steps'])
  if m['nonfinite_tasks'].any():
    record['nonfinite_tasks'] = [n for n, bad in zip(names, m['nonfinite_tasks']) if bad]
  for key in ('task_losses', 'task_counts', 'task_weights', 'task_grad_norms'):
    if key in m:
      record[key] = by_task(m[key])
  if 'task_grad_cosine' in m:
    record['task_grad_cosine'] = {n: by_task(row) for n, row in zip(names, m['task_grad_cosine'])}
  return record


def _placed(abstract: TrainState, shardings) -> TrainState:
  """ShapeDtypeStructs of `abstract` with `shardings` (one sharding, or a tree of them)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _initial_state(init: Callable[[], TrainState], abstract: TrainState, start) -> TrainState:
  """A fresh state from `init`, its parameters taken from `start` (see start_from) if given."""
  state = init()
  if start is None:
    return state
  params = start_from(state.params, start)
  return state.replace(params=jax.device_put(
      params, jax.tree.map(lambda a: a.sharding, abstract.params)))


class NonFiniteError(FloatingPointError):
  """A step's loss or gradient was NaN or Inf under config.faults.nonfinite='stop'."""


def _stop_if_nonfinite(metrics: dict, tasks: Sequence[Task], step: int):
  """Raises NonFiniteError naming the step and the non-finite task(s). Costs one host sync
  per step. The step itself did not apply the update, so the state is the last good one."""
  nonfinite, flags = jax.device_get((metrics['nonfinite'], metrics['nonfinite_tasks']))
  if nonfinite:
    bad = [t.name for t, flag in zip(tasks, flags) if flag]
    where = (f'the loss or per-task gradient of task(s) {bad}' if bad
             else 'the gradient (not attributable to one task)')
    raise NonFiniteError(f'Step {step}: {where} is NaN or Inf '
                         f'(config.faults.nonfinite=\'stop\'; \'skip\' skips such steps).')


def _fit_parts(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData):
  """(model, optimizer, learning-rate schedule, objective terms) of a fit of `tasks`."""
  terms = config_lib.build_terms(config, num_domains=len(data.train_names))
  model = config_lib.build_model(config, tasks, data.vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  return model, make_optimizer(config.optimizer, schedule), schedule, terms


def _state_maker(config: ml_collections.ConfigDict, num_tasks: int, method, model, optimizer,
                 terms) -> Callable[..., TrainState]:
  """create_state for this fit, as a function of the pretrained encoder (or None)."""
  return lambda encoder=None: create_state(
      model, optimizer, method, num_tasks, config.seed, config.data.seq_len,
      config.weighting.mode, config.batch_size, terms, encoder)


def trained_params(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData,
                   workdir: str, method: weighting.Method) -> tuple[nn.Module, Any]:
  """(model, trained parameters on the first local device) of the finished fit in
  `workdir`, as `fit(config, tasks, data, workdir, method)` left them in its last
  checkpoint. FileNotFoundError when it has none; ValueError when the fit did not finish."""
  model, optimizer, _, terms = _fit_parts(config, tasks, data)
  abstract = _placed(jax.eval_shape(_state_maker(config, len(tasks), method, model, optimizer,
                                                  terms)),
                     jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{directory} does not exist: the run kept no checkpoints '
                            f'(config.checkpoint.every=0), so its parameters are lost.')
  checkpoints = checkpoint.Checkpointer(workdir, config.checkpoint,
                                        json.loads(config.to_json_best_effort()), None)
  with contextlib.closing(checkpoints):
    saved = checkpoints.restore(abstract)
  if saved is None or int(saved.step) != config.num_steps:
    raise ValueError(f'{directory}: the newest usable checkpoint is '
                     f'{"none" if saved is None else f"step {int(saved.step)}"}, not the last '
                     f'step {config.num_steps}: the run did not finish; run its training '
                     f'command again to resume it.')
  return model, saved.params


def mesh_predictor(predict: Callable, mesh: jax.sharding.Mesh, rules, param_shardings,
                   batch_size: int) -> Callable:
  """(sharded params, a whole evaluation batch on every process) -> predictions on every
  process, computed by all devices: each process feeds the rows its devices hold."""
  sharding = mesh_lib.batch_sharding(mesh, rules, batch_size, 'config.eval_batch_size')
  rows = distributed.process_rows(sharding, batch_size)
  sharded = mesh_lib.shard_predict(predict, mesh, param_shardings, sharding)
  return lambda params, batch: sharded(params, distributed.global_batch(
      {k: batch[k][rows] for k in INPUT_KEYS}, sharding, batch_size))


def fit(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData,
        workdir: str, method: weighting.Method, desc: str, start=None) -> Fitted:
  """Trains one model on `tasks`, logs to workdir/metrics.jsonl, evaluates it.

  `start`: parameters to begin from instead of the initialisation (see start_from).
  Under several processes each one feeds its own rows of every batch, and process 0 logs.
  """
  if distributed.is_writer():
    os.makedirs(workdir, exist_ok=True)
  tasks = scaled_tasks(tasks, data)
  model, optimizer, schedule, terms = _fit_parts(config, tasks, data)
  step_fn = functools.partial(
      make_train_step, model, optimizer, tasks, method, schedule, config.weighting.mode,
      config.weighting.diagnostics, grouped=config.sampling.strategy == 'grouped',
      terms=terms, micro_batches=config.micro_batches)
  # Per path: the state's layout when saved (abstract), and the conversions between the
  # state the step takes and the one saved.
  if config.parallelism == 'pmap':  # replicated state, the batch split over local devices
    # Saved as global arrays whole on every device (orbax saves only global arrays).
    create = _state_maker(config, len(tasks), method, model, optimizer, terms)
    init = lambda: pmap_lib.to_global(pmap_lib.replicate(create(pretrained.load(model))))
    abstract = _placed(jax.eval_shape(create), pmap_lib.everywhere())
    to_saved, from_saved = pmap_lib.to_global, pmap_lib.from_global
    train_step = pmap_lib.pmap_step(step_fn(axis_name=pmap_lib.AXIS))
    positions = distributed.pmap_rows(config.batch_size)
    feed = functools.partial(pmap_lib.split_batch, num_devices=jax.local_device_count())
    host_params = lambda s: jax.device_get(s.params)
    # Evaluation: the parameters on one device, the whole table on every process.
    predict_step, eval_params = jax.jit(make_predict_step(model, tasks)), host_params
  else:
    mesh, rules = mesh_lib.make_mesh(config.mesh), mesh_lib.axis_rules(config.mesh)
    create, shardings = state_layout(mesh, rules, model, optimizer, method, len(tasks),
                                     config.seed, config.data.seq_len, config.weighting.mode,
                                     config.batch_size, terms)
    # Made in place on the mesh; the checkpoint (read only when no state is restored) is an
    # argument, not a constant of the compile.
    init = lambda: jax.jit(create, out_shardings=shardings)(pretrained.load(model))
    abstract = _placed(jax.eval_shape(create), shardings)
    to_saved = from_saved = lambda s: s
    batch_sharding = mesh_lib.batch_sharding(mesh, rules, config.batch_size)
    train_step = mesh_lib.shard_step(step_fn(), mesh, shardings, batch_sharding)
    positions = distributed.process_rows(batch_sharding, config.batch_size)
    feed = functools.partial(distributed.global_batch, sharding=batch_sharding,
                             batch_size=config.batch_size)
    host_params = lambda s: distributed.fetch(s.params, mesh)
    # Evaluation: the sharded parameters, and each process feeds its rows of every batch.
    predict_step = mesh_predictor(make_predict_step(model, tasks), mesh, rules,
                                  shardings.params, config.eval_batch_size)
    eval_params = lambda s: s.params
  evaluate_state = lambda s: evaluate(predict_step, eval_params(s), tasks, data.eval,
                                      config.eval_batch_size)

  checkpoints = (checkpoint.Checkpointer(workdir, config.checkpoint,
                                         json.loads(config.to_json_best_effort()),
                                         evaluate_state)
                 if config.checkpoint.every else None)
  saved = checkpoints.restore(abstract) if checkpoints else None
  first_step = 0 if saved is None else int(saved.step)
  # Report: features of a fixed validation sample before training (and after, below).
  probe = representations.probe(model, tasks, data.eval, config.logging.representations)
  initial = _initial_state(init, abstract, start) if saved is None or probe else None
  features_before = probe(host_params(initial)) if probe else None
  state = from_saved(initial if saved is None else saved)
  del initial  # a resumed run does not keep the fresh state alive

  batches = train_batches(data, config.sampling, config.seed, config.batch_size, first_step,
                          config.num_steps, positions)
  began = time.perf_counter()
  speed = progress.Throughput(config.batch_size * config.data.seq_len, first_step)
  with metric_writer(workdir, tensorboard=config.logging.tensorboard,
                     resume_step=first_step) as log, \
      metric_writer(workdir, EVAL_CURVE, config.logging.tensorboard, first_step) as curve, \
      checkpoint.PreemptionWatch() if checkpoints else contextlib.nullcontext() as preemption, \
      contextlib.closing(checkpoints) if checkpoints else contextlib.nullcontext(), \
      progress.bar(config.num_steps, desc, quiet=not config.logging.progress,
                   initial=first_step) as bar:
    for step in range(first_step, config.num_steps):
      batch = next(batches)
      state, metrics = train_step(state, feed({k: batch[k] for k in TRAIN_KEYS}))
      if config.parallelism == 'pmap':
        metrics = pmap_lib.unreplicate(metrics)
      if config.faults.nonfinite == 'stop':
        _stop_if_nonfinite(metrics, tasks, step + 1)
      if (step + 1) % config.log_every == 0 or step + 1 == config.num_steps:
        metrics = jax.device_get(metrics)  # waits for the step, so the times below are real
        record = _log_record(step + 1, metrics, tasks, time.perf_counter() - began,
                             speed.update(step + 1))
        log.write(record)
        bar.set_postfix(loss=f'{record["loss"]:.4f}',
                        tok_s=f'{record["tokens_per_second"]:.0f}')
        bar.update(step + 1 - bar.n)
      if config.logging.eval_every and (step + 1) % config.logging.eval_every == 0 \
          and step + 1 < config.num_steps:
        curve.write({'step': step + 1, 'tasks': evaluate_state(to_saved(state))})
      if checkpoints:
        preempted = preemption.reached(step + 1)
        if preempted or checkpoints.due(step + 1, config.num_steps):
          checkpoints.save(step + 1, to_saved(state))
        if preempted:  # leaving the `with` waits for the save to finish
          raise checkpoint.Preempted(step + 1, checkpoints.directory)
    final = evaluate_state(to_saved(state))
    params = host_params(to_saved(state))
    curve.write({'step': config.num_steps, 'tasks': final})

  if probe:
    probe.save(workdir, features_before, probe(params))
  return Fitted(final, params)


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


class FitArgs(NamedTuple):
  """fit's first five arguments."""
  config: ml_collections.ConfigDict
  tasks: tuple[Task, ...]
  data: TaskData
  workdir: str
  method: weighting.Method


def fit_args(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData,
             workdir: str, phase: str, task: Task | None = None) -> FitArgs:
  """fit's (config, tasks, data, workdir, method) for the run's fit of `phase`: 'multi'
  (all tasks, in workdir), or `task`'s 'single' baseline or 'finetune' (in
  workdir/<phase>/<task>)."""
  if phase == 'multi':
    return FitArgs(config, tuple(tasks), data, workdir, config_lib.build_weighting(config))
  return FitArgs(finetune_config(config) if phase == 'finetune' else config, (task,),
                 task_view(data, task.name), os.path.join(workdir, phase, task.name),
                 weighting.get('equal'))


def _task_phase(task_dir: str, name: str, run: Callable[[], dict]) -> dict:
  """One task's metrics from a per-task phase (STL baseline, fine-tuning): its eval.json
  when an earlier attempt of this run finished the phase, else run()'s (then written)."""
  path = os.path.join(task_dir, 'eval.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)['tasks'][name]
  metrics = run()
  _write_json(path, {'tasks': {name: metrics}})
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The main job. Returns what it writes to workdir/eval.json.

  Run again with the same config in the same workdir, it resumes: finished phases are read
  back, the others continue from their last checkpoint (docs/checkpoints.md). Another config
  there is refused unless config.faults.overwrite_workdir, which removes the old run first.
  """
  distributed.initialize(config.distributed)  # before anything touches a device
  tasks = config_lib.validate(config, jax.device_count())
  checkpoint.check_config(config.checkpoint, tasks)
  method = config_lib.build_weighting(config)
  expected = reference.for_config(config)
  # Before the workdir is touched: a task without data fails with nothing written. One
  # tokenisation serves every phase.
  data = load_task_data(config.data, tasks)
  resolved = json.loads(config.to_json_best_effort())
  _check_workdir(workdir, resolved, config.faults.overwrite_workdir)
  _write_json(os.path.join(workdir, 'config.json'), resolved)
  single, multi, finetuned = None, None, None
  if config.mode in ('single', 'both'):
    single = {}
    for task in tasks:
      args = fit_args(config, tasks, data, workdir, 'single', task)
      single[task.name] = _task_phase(args.workdir, task.name, lambda: fit(
          *args, desc=f'STL {task.name}').metrics[task.name])
  if config.mode in ('multi', 'both'):
    multi_fit = fit(config, tasks, data, workdir, method, desc='MTL')
    multi = multi_fit.metrics
    if config.finetune.num_steps:
      finetuned = {}
      for task in tasks:
        args = fit_args(config, tasks, data, workdir, 'finetune', task)
        finetuned[task.name] = _task_phase(args.workdir, task.name, lambda: fit(
            *args, desc=f'fine-tune {task.name}', start=multi_fit.params).metrics[task.name])

  primary = {t.name: t.primary_metric for t in tasks}
  higher = {t: HIGHER_IS_BETTER[m] for t, m in primary.items()}
  report = {'mode': config.mode, 'multi': multi, 'single': single, 'primary_metric': primary}
  if finetuned is not None:
    report['finetuned'] = finetuned
  if multi is not None and single is not None:
    mtl_primary = {t: multi[t][m] for t, m in primary.items()}
    stl_primary = {t: single[t][m] for t, m in primary.items()}
    report['delta_m'] = summary.delta_m(mtl_primary, stl_primary, higher)
    report['per_task_delta'] = summary.per_task_delta(mtl_primary, stl_primary, higher)
  learnable = None
  if single is not None:
    learnable = learnable_alone(tasks, data, single)
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
  return report
