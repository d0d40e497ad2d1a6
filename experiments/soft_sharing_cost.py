"""Step time of soft sharing (G = one encoder per task) against hard sharing on one config,
all timed interleaved round by round in one process; prints one JSON line.

  python -m experiments.soft_sharing_cost            # the main job's config (default.py)
  python -m experiments.soft_sharing_cost --variant smoke

Equal weighting, a fixed synthetic batch (mtl_jax.bench), median of --repeats steps after
three warm-up rounds.
"""

import argparse
import json

import jax
import numpy as np
from absl import logging

from experiments.configs import default
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.bench import _seconds, synthetic_batch
from mtl_jax.train.host_memory import keep_step_buffers_resident
from mtl_jax.train.loop import create_state
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from mtl_jax.train.step import make_train_step

# name -> (architecture, its config.model.args)
VARIANTS = {'hard': ('hard', {}),
            'soft_l2': ('soft', {'penalty': 'l2'}),
            'soft_trace': ('soft', {'penalty': 'trace'})}


def compiled_step(config, tasks, vocab_size, batch, architecture, args):
  """(jitted step compiled for `batch`, its initial state, compile seconds)."""
  config = config.copy_and_resolve_references()
  config.model.architecture = architecture
  config.model.args.update(args)
  model = config_lib.build_model(config, tasks, vocab_size)
  schedule = learning_rate_schedule(config.optimizer, config.num_steps)
  optimizer = make_optimizer(config.optimizer, schedule)
  method = weighting.get('equal')
  state = create_state(model, optimizer, method, len(tasks), config.seed, config.data.seq_len)
  step = jax.jit(make_train_step(model, optimizer, tasks, method, schedule),
                 donate_argnums=0)
  compile_s, step = _seconds(lambda: step.lower(state, batch).compile())
  return step, state, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', default='', help="of default.py: '' or 'smoke'")
  parser.add_argument('--repeats', type=int, default=5, help='timed rounds')
  cli = parser.parse_args()
  logging.set_verbosity(logging.ERROR)
  keep_step_buffers_resident()
  config = default.get_config(cli.variant)
  tasks = config_lib.validate(config)
  vocab_size = config.model.vocab_size or config.data.vocab_size
  batch = jax.device_put(synthetic_batch(tasks, config.batch_size, config.data.seq_len,
                                         vocab_size, config.seed))
  runs = {}
  for name, (architecture, args) in VARIANTS.items():
    step, state, compile_s = compiled_step(config, tasks, vocab_size, batch, architecture, args)
    runs[name] = {'step': step, 'state': state, 'compile_s': compile_s, 'times': []}

  def time_step(run):
    seconds, (run['state'], _) = _seconds(run['step'], run['state'], batch)
    return seconds

  for _ in range(3):  # warm up
    for run in runs.values():
      time_step(run)
  for _ in range(cli.repeats):
    for run in runs.values():
      run['times'].append(time_step(run))
  step_s = {name: float(np.median(run['times'])) for name, run in runs.items()}
  print(json.dumps({
      'config': f'default.py:{cli.variant}',
      'backend': jax.default_backend(), 'num_tasks': len(tasks),
      'batch_size': config.batch_size, 'seq_len': config.data.seq_len,
      'hidden_size': config.model.hidden_size, 'num_layers': config.model.num_layers,
      'step_s': {n: round(s, 5) for n, s in step_s.items()},
      'ratio_to_hard': {n: round(s / step_s['hard'], 2) for n, s in step_s.items()},
      'compile_s': {n: round(r['compile_s'], 1) for n, r in runs.items()}}))


if __name__ == '__main__':
  main()
