"""Times the train step of a named config; prints one JSON line.

  python -m mtl_jax.bench --config experiments/configs/bert_mini.py

It reports the median step time, tokens/s, the model's training FLOP/s (analytic matmul
FLOPs: 3x the forward pass), and that figure as a fraction of a float32 matmul's FLOP/s
measured in the same process, interleaved with the step timings so both see the same
machine load.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import config as config_lib
from mtl_jax.tasks import TaskKind
from mtl_jax.train.host_memory import keep_step_buffers_resident
from mtl_jax.train.loop import build_model, create_state
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.step import make_train_step

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_integer('repeats', 5, 'Timed rounds (each: one matmul timing, one step timing).')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square float32 matmul baseline.')
flags.mark_flags_as_required(['config'])


def synthetic_batch(tasks, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
  """Random tokens, every example labelled for every task (as the PyTorch peer does)."""
  rng = np.random.default_rng(seed)
  ones = np.ones((batch_size, seq_len), np.int32)
  labels, masks = {}, {}
  for t in tasks:
    if t.kind is TaskKind.TAGGING:
      labels[t.name] = rng.integers(0, t.num_labels, (batch_size, seq_len)).astype(np.int32)
    elif t.kind is TaskKind.REGRESSION:
      labels[t.name] = rng.normal(size=batch_size).astype(np.float32)
    else:
      labels[t.name] = rng.integers(0, t.num_labels, batch_size).astype(np.int32)
    masks[t.name] = np.ones(labels[t.name].shape, np.float32)
  return {'input_ids': rng.integers(0, vocab_size, (batch_size, seq_len)).astype(np.int32),
          'segment_ids': 0 * ones, 'attention_mask': ones, 'labels': labels,
          'label_masks': masks}


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


def _seconds(fn, *args) -> tuple[float, object]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def main(argv):
  del argv
  keep_step_buffers_resident()
  config = flags.FLAGS.config
  tasks = config_lib.validate(config)
  vocab_size = config.model.vocab_size or config.data.vocab_size
  model = build_model(config, tasks, vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  optimizer = make_optimizer(config.optimizer, schedule)
  state = create_state(model, optimizer, config.seed, config.data.seq_len)
  weights = jnp.ones((len(tasks),), jnp.float32)
  step = jax.jit(make_train_step(model, optimizer, tasks, weights, schedule), donate_argnums=0)
  batch = jax.device_put(synthetic_batch(tasks, config.batch_size, config.data.seq_len,
                                         vocab_size, config.seed))

  n = flags.FLAGS.matmul_size
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  compile_s, _ = _seconds(lambda: step.lower(state, batch).compile())
  for _ in range(2):  # warm up both
    state, _ = step(state, batch)
    _seconds(matmul, a)
  step_times, matmul_times = [], []
  for _ in range(flags.FLAGS.repeats):
    matmul_times.append(_seconds(matmul, a)[0])
    seconds, (state, metrics) = _seconds(step, state, batch)
    step_times.append(seconds)
  step_s, matmul_s = float(np.median(step_times)), float(np.median(matmul_times))
  flops = train_flops(config.model, tasks, config.batch_size, config.data.seq_len)
  achieved, peak = flops / step_s, 2.0 * n ** 3 / matmul_s
  print(json.dumps({
      'config': flags.FLAGS['config'].value if isinstance(flags.FLAGS['config'].value, str)
      else None,
      'backend': jax.default_backend(), 'devices': jax.device_count(),
      'batch_size': config.batch_size, 'seq_len': config.data.seq_len,
      'step_s': round(step_s, 4), 'tokens_per_s': round(config.batch_size * config.data.seq_len
                                                        / step_s),
      'train_gflop_per_step': round(flops / 1e9, 2), 'achieved_gflop_s': round(achieved / 1e9, 1),
      'matmul_f32_gflop_s': round(peak / 1e9, 1), 'fraction_of_matmul': round(achieved / peak, 3),
      'compile_s': round(compile_s, 1), 'loss': float(metrics['loss']),
  }))


if __name__ == '__main__':
  app.run(main)
