"""Times the train step of a named config; prints one JSON line.

  python -m mtl_jax.bench --config experiments/configs/bert_mini.py
  python -m mtl_jax.bench --config experiments/configs/bert_mini.py \
      --weighting=pcgrad,mgda --num_tasks=8 --mode=representation
  python -m mtl_jax.bench --config experiments/configs/default.py --architectures=soft,mmoe
  python -m mtl_jax.bench --config experiments/configs/scale.py:bert_base \
      --config.model.dtype=bfloat16 --config.batch_size=256 --peak_tflops=989   # GPU MFU

It reports the median step time, tokens/s, the model's training FLOP/s (analytic matmul
FLOPs: 3x the forward pass), and that figure as a fraction of a float32 matmul's FLOP/s
measured in the same process. With --weighting it also times those methods' steps and
reports each one's ratio to equal weighting's; with --architectures, each sharing
architecture's (default fields, equal weighting) ratio to the config's own. All timings are interleaved round by round, so
every figure sees the same machine load.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data import synthetic
from mtl_jax.models import pretrained
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.host_memory import keep_step_buffers_resident
from mtl_jax.train.loop import create_state
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.collectives import Collectives
from mtl_jax.train.forward import Forward
from mtl_jax.train.step import choose_route, make_train_step

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_integer('repeats', 5, 'Timed rounds (each: one matmul timing, one step timing).')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square float32 matmul baseline.')
flags.DEFINE_list('weighting', [], 'Also time these mtl_jax.weighting methods (default '
                  'arguments), each as a ratio to equal weighting.')
flags.DEFINE_float('peak_tflops', 0.0, 'The device\'s peak dense FLOP/s in TFLOP/s for the '
                   'config\'s dtype (H100/H200 bfloat16: 989); adds the step\'s MFU.')
flags.DEFINE_list('architectures', [], 'Also time these sharing architectures (their default '
                  'fields, equal weighting), each as a ratio to the config\'s architecture.')
flags.DEFINE_enum('mode', 'params', weighting.MODES, 'Per-task gradients for --weighting.')
flags.DEFINE_bool('grouped', False, 'Grouped batches (sampling strategy \'grouped\'): each '
                  'row labelled for one task, N equal groups; per-task gradients in one pass.')
flags.DEFINE_integer('num_tasks', 0, 'Replace the config\'s tasks by this many two-class '
                     'sentence classification tasks (0: keep them).')
flags.mark_flags_as_required(['config'])


def train_flops(model_cfg, tasks, batch_size: int, seq_len: int) -> float:
  """Matmul FLOPs of one training step: forward x 3 (the backward pass costs two forwards)."""
  d, f, s = model_cfg.hidden_size, model_cfg.intermediate_size, seq_len
  per_token_layer = 2 * 4 * d * d + 2 * 2 * d * f + 2 * 2 * s * d  # QKVO, FFN, QK^T and AV
  forward = batch_size * s * model_cfg.num_layers * per_token_layer
  for t in tasks:
    units = batch_size * s if t.kind is TaskKind.TAGGING else batch_size
    forward += 2 * units * d * t.num_labels
  if model_cfg.pooler:
    forward += 2 * batch_size * d * d
  return 3.0 * forward


def classification_tasks(num_tasks: int) -> tuple[Task, ...]:
  return tuple(Task(f'bench{i}', TaskKind.CLASSIFICATION, 2, ('words_a',), f'bench{i}',
                    ('accuracy',), 'synthetic') for i in range(num_tasks))


def _seconds(fn, *args) -> tuple[float, object]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # JAX logs routine backend notices
  keep_step_buffers_resident()
  config = config_lib.resolved(flags.FLAGS.config)
  tasks = config_lib.validate(config)
  if flags.FLAGS.num_tasks:
    tasks = classification_tasks(flags.FLAGS.num_tasks)
  vocab_size = config.model.vocab_size or config.data.vocab_size
  model = config_lib.build_model(config, tasks, vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  optimizer = make_optimizer(config.optimizer, schedule)
  batch = jax.device_put(synthetic.synthetic_batch(tasks, config.batch_size, config.data.seq_len,
                                         vocab_size, config.seed, flags.FLAGS.grouped))

  def compiled_step(method, mode, model=model):
    state = create_state(model, optimizer, method, len(tasks), config.seed,
                         config.data.seq_len, mode, config.batch_size,
                         encoder=pretrained.load(model))
    forward = Forward(model, tuple(tasks), {}, Collectives())
    route = choose_route(method, mode, False, flags.FLAGS.grouped)
    step = jax.jit(make_train_step(forward, route, method, optimizer, schedule),
                   donate_argnums=0)
    compile_s, step = _seconds(lambda: step.lower(state, batch).compile())
    return {'step': step, 'state': state, 'compile_s': compile_s, 'times': []}

  runs = {'equal': compiled_step(weighting.get('equal'), 'params')}
  for name in flags.FLAGS.weighting:
    runs[name] = compiled_step(weighting.get(name), flags.FLAGS.mode)
  for name in flags.FLAGS.architectures:
    arch_config = config.copy_and_resolve_references()
    arch_config.model.architecture, arch_config.model.args = name, {}
    runs[f'architecture:{name}'] = compiled_step(
        weighting.get('equal'), 'params', config_lib.build_model(arch_config, tasks, vocab_size))
  n = flags.FLAGS.matmul_size
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)

  def time_step(run):
    seconds, (run['state'], run['metrics']) = _seconds(run['step'], run['state'], batch)
    return seconds

  for _ in range(3):  # warm up; the host heap settles after a few steps
    _seconds(matmul, a)
    for run in runs.values():
      time_step(run)
  matmul_times = []
  for _ in range(flags.FLAGS.repeats):
    matmul_times.append(_seconds(matmul, a)[0])
    for run in runs.values():
      run['times'].append(time_step(run))
  step_s = {name: float(np.median(run['times'])) for name, run in runs.items()}
  matmul_s = float(np.median(matmul_times))
  flops = train_flops(config.model, tasks, config.batch_size, config.data.seq_len)
  achieved, peak = flops / step_s['equal'], 2.0 * n ** 3 / matmul_s
  record = {
      'config': config_flags.get_config_filename(flags.FLAGS['config']),
      'backend': jax.default_backend(), 'devices': jax.device_count(),
      'num_tasks': len(tasks), 'batch_size': config.batch_size,
      'seq_len': config.data.seq_len, 'step_s': round(step_s['equal'], 6),
      'tokens_per_s': round(config.batch_size * config.data.seq_len / step_s['equal']),
      'train_gflop_per_step': round(flops / 1e9, 2), 'achieved_gflop_s': round(achieved / 1e9, 1),
      'matmul_f32_gflop_s': round(peak / 1e9, 1), 'fraction_of_matmul': round(achieved / peak, 3),
      'compile_s': round(runs['equal']['compile_s'], 1),
      'loss': float(runs['equal']['metrics']['loss']),
  }
  if flags.FLAGS.weighting:
    record.update({
        'mode': flags.FLAGS.mode, 'grouped': flags.FLAGS.grouped,
        'weighting_step_s': {n: round(step_s[n], 6) for n in flags.FLAGS.weighting},
        'ratio_to_equal': {n: round(step_s[n] / step_s['equal'], 3)
                           for n in flags.FLAGS.weighting}})
  if flags.FLAGS.peak_tflops:
    record['dtype'] = config.model.dtype
    record['mfu'] = round(achieved / (flags.FLAGS.peak_tflops * 1e12), 4)
  if flags.FLAGS.architectures:
    record['architecture_ratio'] = {
        n: round(step_s[f'architecture:{n}'] / step_s['equal'], 3)
        for n in flags.FLAGS.architectures}
  print(json.dumps(record))


if __name__ == '__main__':
  app.run(main)
