"""Kills the main job at random steps (SIGKILL and SIGTERM), resumes it each time with the
same command, and compares the result with an uninterrupted run.

  python -m experiments.fault_injection [--kills 4] [--seed 0] [--full] [--workdir DIR]

By default the job is default.py:smoke (MTL only, 60 steps, a checkpoint every 10); --full
runs the real default config (STL baselines + MTL). Prints the kills survived and whether
eval.json, metrics.jsonl (less its wall-clock entries) and the final checkpoint's state are
identical to the uninterrupted run's.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mtl_jax.train import checkpoint, loop

SMOKE = ['--config=experiments/configs/default.py:smoke', '--config.mode=multi',
         '--config.num_steps=60', '--config.checkpoint.every=10']
FULL = ['--config=experiments/configs/default.py']


def _command(flags: list[str], workdir: str) -> list[str]:
  return [sys.executable, '-m', 'mtl_jax.train', *flags, f'--workdir={workdir}']


def _logged_step(workdir: str) -> int:
  """The newest step in the MTL run's metrics.jsonl (0 before the first record)."""
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return max((json.loads(line)['step'] for line in f if line.endswith('\n')), default=0)
  except FileNotFoundError:
    return 0


def _kill_at(flags, workdir: str, step: int, sig: signal.Signals) -> tuple[bool, str]:
  """Runs the job until its log reaches `step` (or it ends), then sends `sig`. Returns
  (whether the signal interrupted it, what happened: a signal that lands after the last
  step lets the run finish)."""
  proc = subprocess.Popen(_command(flags, workdir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  while proc.poll() is None and _logged_step(workdir) < step:
    time.sleep(0.05)
  if proc.poll() is not None:
    return False, f'finished before step {step}'
  proc.send_signal(sig)
  stderr = proc.communicate()[1]
  preempted = [line for line in stderr.splitlines() if line.startswith('Preempted')]
  return (proc.returncode != 0,
          f'{sig.name} at logged step {step}: exit {proc.returncode} {"".join(preempted)}')


def _final_state(workdir: str) -> list[np.ndarray]:
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')))
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(steps[-1]), checkpoint.STATE))
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(state)]


def _comparable_log(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in loop.TIMING_KEYS}
            for line in f]


def _same(a: str, b: str) -> dict[str, bool]:
  with open(os.path.join(a, 'eval.json')) as fa, open(os.path.join(b, 'eval.json')) as fb:
    same_eval = json.load(fa) == json.load(fb)
  state_a, state_b = _final_state(a), _final_state(b)
  return {'eval.json': same_eval,
          'metrics.jsonl': _comparable_log(a) == _comparable_log(b),
          'final state': len(state_a) == len(state_b) and all(
              x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(state_a, state_b))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--kills', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--full', action='store_true', help='the real default config')
  parser.add_argument('--workdir', default='', help='default: a new temporary folder')
  args = parser.parse_args()
  flags, num_steps = (FULL, 600) if args.full else (SMOKE, 60)
  root = args.workdir or tempfile.mkdtemp(prefix='fault_injection_')
  clean, faulty = os.path.join(root, 'uninterrupted'), os.path.join(root, 'interrupted')

  subprocess.run(_command(flags, clean), check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  rng = random.Random(args.seed)
  steps = sorted(rng.sample(range(1, num_steps), args.kills))
  survived = 0
  for i, step in enumerate(steps):
    sig = (signal.SIGKILL, signal.SIGTERM)[i % 2]
    interrupted, what = _kill_at(flags, faulty, step, sig)
    survived += interrupted
    print(what, flush=True)
  finished = os.path.exists(os.path.join(faulty, 'eval.json'))  # a finished run is refused
  last = None if finished else subprocess.run(_command(flags, faulty), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
  if last and last.returncode:
    sys.exit(f'The resumed run failed (exit {last.returncode}).')
  same = _same(clean, faulty)
  print(f'kills survived: {survived} of {len(steps)}')
  for name, equal in same.items():
    print(f'{name}: {"identical" if equal else "DIFFERENT"}')
  print('RESULT:', 'identical' if all(same.values()) else 'DIFFERENT', f'(runs in {root})')


if __name__ == '__main__':
  main()
