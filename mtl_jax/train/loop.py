"""fit: trains one model on some tasks, logs, checkpoints and evaluates it; and the state
and program a fit is made of (create_state, program).

The backend (mtl_jax.parallel.backend) places the program on the devices; fit reads the
same way under the mesh and pmap. The main job (mtl_jax.jobs.main) calls fit once per phase.
"""

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl_jax import config as config_lib
from mtl_jax import progress
from mtl_jax import weighting
from mtl_jax.data import text_batches
from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.data.pipeline import TaskData, scaled_tasks, train_batches
from mtl_jax.data.text_data import TextData
from mtl_jax.evaluation.evaluate import evaluate
from mtl_jax.evaluation.text_eval import evaluate_text
from mtl_jax.models import pretrained
from mtl_jax.models.decoder import Decoder
from mtl_jax.objectives import terms as terms_lib
from mtl_jax.objectives.terms import Term
from mtl_jax.parallel import distributed
from mtl_jax.parallel.backend import Program, placed
from mtl_jax.tasks import Task
from mtl_jax.train import checkpoint
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward
from mtl_jax.train.gradients import task_gradient_like
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.state import TrainState
from mtl_jax.train.step import choose_route, make_predict_step, make_train_step
from mtl_jax.train.writer import metric_writer

EVAL_CURVE = 'eval_curve'  # workdir/eval_curve.jsonl: {'step', 'tasks': task -> metrics}
TRAIN_KEYS = (*INPUT_KEYS, 'labels', 'label_masks', 'domain')  # of a classification batch
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


# Dropout bits from XLA's RngBitGenerator: on CPU, threefry bits cost more than the small
# default model's layers. Still a pure function of (seed, step).
DROPOUT_KEY_IMPL = 'unsafe_rbg'


def create_state(model, optimizer, method, num_tasks: int, seed: int, seq_len: int,
                 mode: str = 'params', batch_size: int = 1,
                 terms: dict[str, Term] | None = None, encoder: dict | None = None
                 ) -> TrainState:
  """`mode` and `batch_size` shape the state of methods that keep per-task gradients.
  `terms`: the objective terms, whose parameters start from keys folded from the seed's.
  `encoder`: the pretrained encoder's parameters (pretrained.load(model)), which replace the
  encoder's random init; give them whenever model.encoder_config.pretrained is set."""
  dropout_key = jax.random.key(seed, impl=DROPOUT_KEY_IMPL)
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


def state_program(model, optimizer, method, num_tasks: int, seed: int, seq_len: int,
                  mode: str = 'params', batch_size: int = 1,
                  terms: dict[str, Term] | None = None) -> tuple[Callable, Any]:
  """(create(encoder=None) -> the first TrainState (create_state's), boxed() -> the
  parameters' shapes boxed with their logical axis names): what a backend needs to create
  the state in place (mtl_jax.parallel.mesh.placement). `boxed` traces the model's init, so
  only a backend that reads logical axes calls it."""
  create = lambda encoder=None: create_state(model, optimizer, method, num_tasks, seed,
                                             seq_len, mode, batch_size, terms, encoder)
  return create, lambda: jax.eval_shape(lambda: init_params(model, seed, seq_len))


class Probe(Protocol):
  """Reads the model's features of fixed inputs before and after a fit
  (mtl_jax.report.representations)."""

  def __call__(self, params) -> Any: ...

  def save(self, workdir: str, before: Any, after: Any) -> None: ...


# (model, the fit's tasks) -> a Probe, or None for none: handed to fit by its caller.
ProbeMaker = Callable[[nn.Module, Sequence[Task]], Probe | None]


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


def _train_batches(config: ml_collections.ConfigDict, data: TaskData | TextData,
                   first_step: int, rows: np.ndarray) -> Iterator[dict]:
  """The fit's batches from `first_step` on, this process's `rows` of each."""
  if isinstance(data, TextData):
    return data.batches(config.seed, config.batch_size, first_step, config.num_steps, rows)
  return train_batches(data, config.sampling, config.seed, config.batch_size, first_step,
                       config.num_steps, rows)


def _evaluator(config: ml_collections.ConfigDict, model: nn.Module, tasks: Sequence[Task],
               data: TaskData | TextData, backend) -> Callable[[TrainState], dict]:
  """saved state -> task -> metrics: the compiled predictor over data's tables, or for a
  text run the decoder's likelihoods (and replies) of every trained and held-out task."""
  if isinstance(data, TextData):
    decoder = Decoder(model.encoder_config.decoder)
    return lambda s: evaluate_text(decoder, backend.host_params(s)['encoder'], data,
                                   config.eval_batch_size)
  return lambda s: evaluate(backend.predict, backend.eval_params(s), tasks, data.eval,
                            config.eval_batch_size)


def program(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData,
            method: weighting.Method) -> tuple[nn.Module, Program]:
  """The model of a fit of `tasks`, and what the fit computes (its state, step and
  predictions) as functions for a backend (mtl_jax.parallel.backend) to place."""
  terms = config_lib.build_terms(config, num_domains=len(data.train_names))
  model = config_lib.build_model(config, tasks, data.vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  optimizer = make_optimizer(config.optimizer, schedule)
  create, boxed_params = state_program(model, optimizer, method, len(tasks), config.seed,
                                       config.data.seq_len, config.weighting.mode,
                                       config.batch_size, terms)
  w = config.weighting

  def train_step(axis_name=None):
    forward = Forward(model, tuple(tasks), terms, Collectives(axis_name, config.micro_batches))
    route = choose_route(method, w.mode, w.diagnostics, config.sampling.strategy == 'grouped',
                         forward.collectives)
    return make_train_step(forward, route, method, optimizer, schedule, w.diagnostics)

  return model, Program(create, boxed_params, train_step, make_predict_step(model, tasks))


def trained_params(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData,
                   workdir: str, method: weighting.Method) -> tuple[nn.Module, Any]:
  """(model, trained parameters on the first local device) of the finished fit in
  `workdir`, as `fit(config, tasks, data, workdir, method)` left them in its last
  checkpoint. FileNotFoundError when it has none; ValueError when the fit did not finish."""
  model, run = program(config, tasks, data, method)
  abstract = placed(jax.eval_shape(run.create),
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


def fit(config: ml_collections.ConfigDict, tasks: Sequence[Task], data: TaskData,
        workdir: str, method: weighting.Method, desc: str, start=None,
        probe: ProbeMaker | None = None) -> Fitted:
  """Trains one model on `tasks`, logs to workdir/metrics.jsonl, evaluates it.

  `start`: parameters to begin from instead of the initialisation (see start_from).
  `probe`: reads the model's features before and after training, and saves them.
  Under several processes each one feeds its own rows of every batch, and process 0 logs.
  """
  if distributed.is_writer():
    os.makedirs(workdir, exist_ok=True)
  tasks = scaled_tasks(tasks, data)
  model, run = program(config, tasks, data, method)
  backend = config_lib.build_backend(config, run)
  evaluate_state = _evaluator(config, model, tasks, data, backend)
  keys = text_batches.TRAIN_KEYS if isinstance(data, TextData) else TRAIN_KEYS

  checkpoints = (checkpoint.Checkpointer(workdir, config.checkpoint,
                                         json.loads(config.to_json_best_effort()),
                                         evaluate_state)
                 if config.checkpoint.every else None)
  saved = checkpoints.restore(backend.abstract) if checkpoints else None
  first_step = 0 if saved is None else int(saved.step)
  # Report: features of a fixed validation sample before training (and after, below).
  observe = probe(model, tasks) if probe else None
  initial = (_initial_state(lambda: backend.init(pretrained.load(model)), backend.abstract,
                            start) if saved is None or observe else None)
  features_before = observe(backend.host_params(initial)) if observe else None
  state = backend.from_saved(initial if saved is None else saved)
  del initial  # a resumed run does not keep the fresh state alive

  batches = _train_batches(config, data, first_step, backend.rows)
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
      state, metrics = backend.step(state, {k: batch[k] for k in keys})
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
        curve.write({'step': step + 1, 'tasks': evaluate_state(backend.to_saved(state))})
      if checkpoints:
        preempted = preemption.reached(step + 1)
        if preempted or checkpoints.due(step + 1, config.num_steps):
          checkpoints.save(step + 1, backend.to_saved(state))
        if preempted:  # leaving the `with` waits for the save to finish
          raise checkpoint.Preempted(step + 1, checkpoints.directory)
    state = backend.to_saved(state)
    final = evaluate_state(state)
    params = backend.host_params(state)
    curve.write({'step': config.num_steps, 'tasks': final})

  if observe:
    observe.save(workdir, features_before, observe(params))
  return Fitted(final, params)


