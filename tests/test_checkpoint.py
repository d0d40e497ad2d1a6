"""Checkpoints: exact resume (in-process crash and a real SIGKILL), SIGTERM saves and stops,
restores onto other meshes, broken checkpoints are named and skipped, best-M retention."""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments.configs import default
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.jobs import main as main_job
from mtl_jax.objectives.terms import TermState
from mtl_jax.parallel import mesh as mesh_lib
from mtl_jax.train import checkpoint, loop
from mtl_jax.train.optimizer import make_optimizer
from mtl_jax.train.state import TrainState

NUM_STEPS, EVERY = 30, 10
SUBPROCESS_TIMEOUT_S = 240


def _config(data_dir: str) -> ml_collections.ConfigDict:
  """The job every resume test runs: MTL on the smoke suite, with dropout (so the restored
  RNG matters), a weighting method with a state (so the restored weighting state matters)
  and a checkpoint every EVERY steps."""
  c = default.get_config('smoke')
  c.data.data_dir, c.mode = data_dir, 'multi'
  c.weighting.name = 'uncertainty'
  c.num_steps, c.checkpoint.every = NUM_STEPS, EVERY
  return c


def _flags(config) -> list[str]:
  """The command-line form of _config's overrides."""
  return [f'--config.data.data_dir={config.data.data_dir}', f'--config.mode={config.mode}',
          f'--config.weighting.name={config.weighting.name}',
          f'--config.num_steps={config.num_steps}',
          f'--config.checkpoint.every={config.checkpoint.every}']


def _log(workdir: str) -> list[dict]:
  """metrics.jsonl without the wall-clock field, the one thing a resumed run cannot match."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in loop.TIMING_KEYS} for line in f]


def _saved(workdir: str, step: int) -> dict:
  """The state saved at `step`, read straight from orbax's files (a dict of arrays)."""
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step),
                                                         checkpoint.STATE))


def _assert_same_run(workdir: str, reference: str):
  assert _log(workdir) == _log(reference)
  for name in ('eval.json',):
    with open(os.path.join(workdir, name)) as a, open(os.path.join(reference, name)) as b:
      assert json.load(a) == json.load(b)
  for x, y in zip(_host(_saved(workdir, NUM_STEPS)), _host(_saved(reference, NUM_STEPS)),
                  strict=True):
    np.testing.assert_array_equal(x, y)  # bitwise: floats compared exactly, NaN included


def _wait_for(path: str, timeout_s: float = SUBPROCESS_TIMEOUT_S, proc=None):
  """Polls until `path` exists (orbax renames a step folder into place once committed)."""
  deadline = time.monotonic() + timeout_s
  while not os.path.exists(path):
    assert time.monotonic() < deadline, f'{path} did not appear'
    assert proc is None or proc.poll() is None, proc.communicate()[0]
    time.sleep(0.02)


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  main_job.train_and_evaluate(_config(data_dir), workdir)
  return workdir


def _crash_and_resume(config, workdir: str, monkeypatch):
  """Runs `config` until just after step 25 (past the step-20 checkpoint), then again."""
  def crash(self, step):
    if step == 2 * EVERY + 6:  # after the log record of step 25
      _wait_for(os.path.join(workdir, 'checkpoints', str(2 * EVERY)))
      raise KeyboardInterrupt('crash')
    return False

  with monkeypatch.context() as m:
    m.setattr(checkpoint.PreemptionWatch, 'reached', crash)
    with pytest.raises(KeyboardInterrupt):
      main_job.train_and_evaluate(config, workdir)
  assert max(r['step'] for r in _log(workdir)) > 2 * EVERY  # the log ran past the checkpoint

  starts = []
  train_batches = loop.train_batches
  monkeypatch.setattr(loop, 'train_batches',
                      lambda *a, **k: (starts.append(a[4]), train_batches(*a, **k))[1])
  main_job.train_and_evaluate(config, workdir)
  assert starts == [2 * EVERY]  # resumed, not started again


@pytest.mark.integration
def test_resume_after_crash_is_bitwise_identical(data_dir, uninterrupted, tmp_path,
                                                 monkeypatch):
  _crash_and_resume(_config(data_dir), str(tmp_path), monkeypatch)
  _assert_same_run(str(tmp_path), uninterrupted)


@pytest.mark.integration
def test_pmap_resume_after_crash_is_bitwise_identical(data_dir, tmp_path, monkeypatch):
  """pmap's per-device copies are saved as one global array and handed back to every
  device on restore (mtl_jax.parallel.pmap.to_global / from_global)."""
  config = _config(data_dir)
  config.parallelism = 'pmap'
  main_job.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))
  _crash_and_resume(config, str(tmp_path / 'resumed'), monkeypatch)
  _assert_same_run(str(tmp_path / 'resumed'), str(tmp_path / 'uninterrupted'))


def _train_command(config, workdir: str) -> list[str]:
  return [sys.executable, '-m', 'mtl_jax.train',
          '--config=experiments/configs/default.py:smoke', f'--workdir={workdir}',
          *_flags(config)]


def _popen(command):
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(data_dir, uninterrupted, tmp_path):
  workdir, config = str(tmp_path), _config(data_dir)
  proc = _popen(_train_command(config, workdir))
  try:
    _wait_for(os.path.join(workdir, 'checkpoints', str(2 * EVERY)), proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))  # killed mid-run

  out = subprocess.run(_train_command(config, workdir), capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT_S,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-3000:]
  _assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits(data_dir, tmp_path):
  workdir, config = str(tmp_path), _config(data_dir)
  config.num_steps, config.checkpoint.every = 2000, 5000  # no periodic save: only SIGTERM's
  proc = _popen(_train_command(config, workdir))
  try:
    _wait_for(os.path.join(workdir, 'metrics.jsonl'), proc=proc)
    while not open(os.path.join(workdir, 'metrics.jsonl')).read():  # first step compiled
      assert proc.poll() is None
      time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
  finally:
    proc.kill()
  assert proc.returncode == checkpoint.PREEMPTED_EXIT_CODE, output[-3000:]
  stopped = int(output.split('Preempted: stopped at step ')[1].split()[0])
  assert 0 < stopped < config.num_steps
  # The save finished before the exit: orbax lists it and it restores with its fingerprint.
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]
  with open(os.path.join(workdir, 'checkpoints', str(stopped), checkpoint.META,
                         'metadata')) as f:
    meta = json.load(f)
  assert meta['step'] == int(_saved(workdir, stopped)['step']) == stopped


def _mesh_state(config, devices):
  """(state, abstract state with shardings) of the smoke model on `devices` under
  config.mesh."""
  tasks = config_lib.validate(config)
  model = config_lib.build_model(config, tasks, tokenizer_vocab_size=100)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  create, boxed = loop.state_program(model, make_optimizer(config.optimizer, 1e-3),
                                     weighting.get('equal'), len(tasks), config.seed,
                                     config.data.seq_len)
  init, abstract = mesh_lib.placement(create, boxed, mesh, mesh_lib.axis_rules(config.mesh))
  return init(None), abstract


def _host(tree) -> list[np.ndarray]:
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.integration
@pytest.mark.parametrize('layout', [dict(data=1, fsdp=1, tensor=1, devices=1),
                                    dict(data=2, fsdp=2, tensor=2, devices=8)])
def test_restore_onto_another_mesh(smoke_config, tmp_path, layout):
  smoke_config.mesh.update(data=1, fsdp=8, tensor=1)
  saved_state, _ = _mesh_state(smoke_config, jax.devices())
  # Distinct values everywhere, so a leaf put in the wrong place would show.
  saved_state = jax.tree.map(lambda x: x + jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)
                             if jnp.issubdtype(x.dtype, jnp.floating) else x, saved_state)
  ckpt = checkpoint.Checkpointer(str(tmp_path), smoke_config.checkpoint, {}, evaluate=None)
  ckpt.save(7, saved_state)
  ckpt.close()

  target = ml_collections.ConfigDict(smoke_config.to_dict())
  devices = layout.pop('devices')
  target.mesh.update(**layout)
  _, abstract = _mesh_state(target, jax.devices()[:devices])
  restored = _restore(str(tmp_path), abstract)
  for x, y in zip(_host(restored), _host(saved_state), strict=True):
    np.testing.assert_array_equal(x, y)
  for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
    assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim)


def _weights(value: float) -> jax.Array:
  """Values that compress badly and are too big to inline, so the data file holds them
  byte for byte: a flipped byte there restores silently unless the fingerprint catches it."""
  return value + jnp.sin(jnp.arange(4096.0))


def _small_state(value: float) -> TrainState:
  params = {'w': _weights(value), 'b': jnp.zeros(3)}
  return TrainState(step=jnp.array(int(value), jnp.int32), params=params,
                    opt_state=optax.adam(1e-3).init(params), weighting=(),
                    rng=jax.random.key(0, impl='unsafe_rbg'),
                    skipped_steps=jnp.zeros((), jnp.int32))


def _checkpointer(workdir, **fields):
  evaluate = fields.pop('evaluate', None)
  cfg = default.get_config('smoke').checkpoint
  cfg.update({'keep': 0, **fields})
  return checkpoint.Checkpointer(workdir, cfg, {}, evaluate)


def _restore(workdir, abstract):
  ckpt = _checkpointer(workdir)
  try:
    return ckpt.restore(abstract)
  finally:
    ckpt.close()


def _save_steps(workdir, steps, **fields):
  ckpt = _checkpointer(workdir, **fields)
  for step in steps:
    ckpt.save(step, _small_state(step))
  ckpt.close()


def _garble(path: str):
  """Flips one byte in the middle of the state's largest data file (the arrays' bytes; the
  smaller files are OCDBT's index nodes, whose damage orbax reports by itself)."""
  files = glob.glob(os.path.join(path, 'state', '**', 'd', '*'), recursive=True)
  name = max(files, key=os.path.getsize)
  data = bytearray(open(name, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  open(name, 'wb').write(bytes(data))


@pytest.mark.parametrize('damage', [
    _garble,
    lambda path: os.remove(os.path.join(path, 'state', '_METADATA')),
    lambda path: os.remove(os.path.join(path, 'meta', 'metadata')),
])
def test_broken_latest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
  _save_steps(str(tmp_path), [1, 2])
  damage(str(tmp_path / 'checkpoints' / '2'))
  abstract = jax.eval_shape(lambda: _small_state(0))
  with pytest.warns(checkpoint.CheckpointWarning, match=r'checkpoints/2 is unusable'):
    restored = _restore(str(tmp_path), abstract)
  assert int(restored.step) == 1
  np.testing.assert_array_equal(restored.params['w'], _weights(1.0))


def test_no_good_checkpoint_is_an_error(tmp_path):
  _save_steps(str(tmp_path), [1])
  _garble(str(tmp_path / 'checkpoints' / '1'))
  with pytest.warns(checkpoint.CheckpointWarning), \
      pytest.raises(checkpoint.CheckpointError, match=r'None of the checkpoints in .*steps \[1\]'):
    _restore(str(tmp_path), jax.eval_shape(lambda: _small_state(0)))


class Format1State(flax.struct.PyTreeNode):
  """TrainState as state format 1 had it (before objective terms had their own state)."""
  step: jax.Array
  params: Any
  opt_state: Any
  weighting: Any
  rng: jax.Array
  skipped_steps: jax.Array
  adversary_opt_state: Any = None


def test_an_older_state_format_resumes_without_objective_terms_and_is_refused_with_them(
    tmp_path):
  """A checkpoint of state format 1 (its meta has no state_format) holds the same arrays as
  format 2 when the run has no objective term: it resumes. With one (the adversary, whose
  discriminator format 1 kept inside the model's params) it is refused by name."""
  state = _small_state(1)
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != 'terms'}
  ckpt = _checkpointer(str(tmp_path))
  ckpt.save(1, Format1State(**fields))
  ckpt.close()
  meta_file = tmp_path / 'checkpoints' / '1' / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  assert meta.pop('state_format') == 2
  meta_file.write_text(json.dumps(meta))
  abstract = jax.eval_shape(lambda: _small_state(0))
  restored = _restore(str(tmp_path), abstract)
  assert isinstance(restored, TrainState) and restored.terms == {}
  for x, y in zip(_host(restored), _host(state), strict=True):
    np.testing.assert_array_equal(x, y)
  term = TermState({'w': jnp.zeros(2)}, optax.sgd(0.1).init({'w': jnp.zeros(2)}))
  with_term = jax.eval_shape(lambda: _small_state(0).replace(terms={'adversary': term}))
  with pytest.raises(checkpoint.CheckpointError, match=r'has state format 1; this mtl_jax '
                     r'writes and reads format 2 \(objective terms'):
    _restore(str(tmp_path), with_term)


def test_keeps_the_latest_and_the_best(tmp_path):
  accuracy = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.4}
  evaluate = lambda state: {'sentiment': {'accuracy': accuracy[int(state.step)]}}
  _save_steps(str(tmp_path), accuracy, keep=1, best_metric='sentiment/accuracy', keep_best=1,
              evaluate=evaluate)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def test_fingerprint_sees_one_flipped_bit():
  x = jnp.arange(1000, dtype=jnp.float32)
  flipped = jax.lax.bitcast_convert_type(x, jnp.uint32).at[517].add(1 << 20)
  assert checkpoint.fingerprint(x) == checkpoint.fingerprint(jnp.array(x))
  assert checkpoint.fingerprint(x) != checkpoint.fingerprint(
      jax.lax.bitcast_convert_type(flipped, jnp.float32))
