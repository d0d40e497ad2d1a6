"""Two processes × 4 CPU devices (gloo collectives over localhost) train exactly like one
process with 8 devices: same per-step losses, same evaluation, and only process 0 writes;
run again, the two processes resume from their shared checkpoint."""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

import multihost_worker
from mtl_jax.jobs.main import train_and_evaluate

pytestmark = pytest.mark.slow

WORKER = os.path.abspath(multihost_worker.__file__)
TIMEOUT_S = 420  # both processes together; a hang fails the test instead of the suite


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run_processes(layout, workdir, data_dir, num_processes=2):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, layout, workdir, data_dir, str(port),
                             str(i), str(num_processes)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}'
  return outputs


def _read(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'eval.json')) as f:
    return steps, json.load(f)['multi']


@pytest.mark.parametrize('layout', ['mesh', 'pmap'])
def test_two_processes_train_like_one(layout, data_dir, tmp_path):
  import jax
  assert jax.device_count() == 2 * multihost_worker.LOCAL_DEVICES
  train_and_evaluate(multihost_worker.config(layout, data_dir), str(tmp_path / 'one'))
  outputs = _run_processes(layout, str(tmp_path / 'two'), data_dir)
  # Each process read only the rows it fed: at most 4 steps x 8 of the 448 training rows.
  for i, out in enumerate(outputs):
    (read, total), = re.findall(rf'Process {i} reads (\d+) of the (\d+) training rows', out)
    assert 0 < int(read) <= 32 and int(total) == 448, out[-3000:]

  (steps, evals), (other_steps, other_evals) = _read(tmp_path / 'one'), _read(tmp_path / 'two')
  assert [s['step'] for s in other_steps] == [1, 2, 3, 4]
  for a, b in zip(steps, other_steps, strict=True):
    np.testing.assert_allclose(b['loss'], a['loss'], rtol=2e-5)
    for task, value in a['task_losses'].items():
      np.testing.assert_allclose(b['task_losses'][task], value, rtol=2e-5, err_msg=task)
  assert steps[-1]['loss'] != steps[0]['loss']  # training moved: the comparison is not vacuous
  for task, metrics in evals.items():  # a correlation near 0 cancels: an absolute tolerance
    for name, value in metrics.items():
      np.testing.assert_allclose(other_evals[task][name], value, rtol=1e-4, atol=2e-4,
                                 err_msg=f'{task} {name}')
  # One shared workdir (orbax writes each process's shards of a checkpoint there): the log
  # has each step once, so process 1 wrote no records, and the same files as one process.
  assert sorted(os.listdir(tmp_path / 'two')) == sorted(os.listdir(tmp_path / 'one'))
  # The same command again: both processes restore the final checkpoint (pmap's replicas
  # are saved as one global array) and evaluate it again. The log, wall-clock times
  # included, is untouched: no step ran again.
  before = {name: (tmp_path / 'two' / name).read_text() for name in ('eval.json',
                                                                      'metrics.jsonl')}
  _run_processes(layout, str(tmp_path / 'two'), data_dir)
  assert {name: (tmp_path / 'two' / name).read_text() for name in before} == before
