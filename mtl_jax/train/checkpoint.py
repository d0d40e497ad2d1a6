"""Checkpoints of one fit: orbax saves, verified restores, and preemption.

A fit's checkpoints live in workdir/checkpoints/<step>/ with three items: 'state' (the whole
TrainState), 'meta' (the step, which is also the data position since batch k is a pure
function of (seed, k), the state's fingerprint, and the evaluation when one ran) and
'config' (the resolved config). Saves are asynchronous: training goes on while a save is
written, and orbax only lists a step once its save has committed, so a killed run never
leaves a half-written checkpoint that looks complete.

Orbax does not notice flipped bytes inside an array file (it restores them silently), so
every save stores a fingerprint of the state (two 32-bit sums per leaf, computed on the
devices) and a restore is used only if the restored state has the same fingerprint.
docs/checkpoints.md has the whole story.
"""

import dataclasses
import os
import signal
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax._src import distributed as jax_distributed  # the preemption service's handle
from jax.experimental import multihost_utils

from mtl_jax.errors import ConfigError
from mtl_jax.metrics import HIGHER_IS_BETTER
from mtl_jax.tasks import Task
from mtl_jax.train.state import STATE_FORMAT

STATE, META, CONFIG = 'state', 'meta', 'config'
# Exit status of a run stopped by SIGTERM after its checkpoint was written: 128 + SIGTERM,
# what a shell reports for a process SIGTERM ended, so a scheduler sees "terminated, rerun".
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class CheckpointWarning(UserWarning):
  """A checkpoint could not be used and an older one is tried."""


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir that holds some can be used."""


class Preempted(Exception):
  """SIGTERM arrived; the state was saved at `step` and the run stopped."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'Preempted: stopped at step {step} after saving its checkpoint in '
                     f'{directory}; run the same command again to resume.')
    self.step = step


def check_config(cfg: ml_collections.ConfigDict, tasks: tuple[Task, ...]):
  """config.checkpoint's errors, named by field, before anything is built."""
  for field in ('every', 'keep', 'keep_best'):
    if cfg[field] < 0:
      raise ConfigError(f'config.checkpoint.{field}: must be >= 0, got {cfg[field]!r}.')
  if cfg.best_metric:
    task, _, metric = cfg.best_metric.partition('/')
    names = {t.name: t for t in tasks}
    if task not in names or metric not in HIGHER_IS_BETTER:
      raise ConfigError(f'config.checkpoint.best_metric: {cfg.best_metric!r} is not '
                        f'"task/metric" for a task of this run ({", ".join(names)}) and a '
                        f'known metric.')


@jax.jit
def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """(sum, position-weighted sum) of the leaf's bits as uint32: any single changed word
  changes both (the weights are odd). One small program per leaf shape: every fit of a model
  shares them, where one program for the whole state would be compiled again for each
  state's structure (each fit's heads)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}'))
  bits = bits.astype(jnp.uint32).ravel()
  weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


def fingerprint(tree) -> dict[str, list[int]]:
  """Leaf path -> its two sums: equal trees give equal fingerprints, and a flipped bit
  anywhere gives a different one."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  sums = jax.device_get([_leaf_fingerprint(x) for x in jax.tree.leaves(tree)])
  return {path: [int(v) for v in s] for path, s in zip(paths, sums)}


def _preservation(cfg: ml_collections.ConfigDict) -> ocp.checkpoint_managers.PreservationPolicy:
  """The latest `keep`, plus the best `keep_best` by `best_metric` (checkpoints with an
  evaluation; see Checkpointer.save)."""
  latest = ocp.checkpoint_managers.LatestN(n=cfg.keep or None)
  if not cfg.best_metric:
    return latest
  higher = HIGHER_IS_BETTER[cfg.best_metric.partition('/')[2]]
  best = ocp.checkpoint_managers.BestN(
      get_metric_fn=lambda m: m[cfg.best_metric], reverse=not higher, n=cfg.keep_best,
      keep_checkpoints_without_metrics=False)
  return ocp.checkpoint_managers.AnyPreservationPolicy([latest, best])


class Checkpointer:
  """workdir/checkpoints of one fit. `evaluate(state) -> task -> metrics` runs before a save
  when config.checkpoint.best_metric is set, so BestN can rank the checkpoints."""

  def __init__(self, workdir: str, cfg: ml_collections.ConfigDict, config_json: dict,
               evaluate: Callable[[object], dict[str, dict[str, float]]]):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._cfg, self._config_json, self._evaluate = cfg, config_json, evaluate
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            preservation_policy=_preservation(cfg), create=True))

  def due(self, step: int, num_steps: int) -> bool:
    """Every `every` steps and at the end (never when `every` is 0)."""
    return bool(self._cfg.every) and (step % self._cfg.every == 0 or step == num_steps)

  def save(self, step: int, state):
    """Starts an asynchronous save of `state` at `step` (a step already saved is skipped)."""
    if step == self._manager.latest_step():
      return
    meta = {'step': step, 'fingerprint': fingerprint(state), 'state_format': STATE_FORMAT}
    metrics = None
    if self._cfg.best_metric:
      task, _, metric = self._cfg.best_metric.partition('/')
      meta['eval'] = self._evaluate(state)
      metrics = {self._cfg.best_metric: meta['eval'][task][metric]}
    self._manager.save(step, metrics=metrics, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta),
        CONFIG: ocp.args.JsonSave(self._config_json)}))

  def restore(self, abstract_state):
    """The newest usable checkpoint's state, laid out as `abstract_state` (ShapeDtypeStructs
    with the run's shardings, so a checkpoint from another mesh is resharded), or None when
    there is none. A checkpoint that fails to restore or whose fingerprint differs is named
    in a CheckpointWarning and the one before it is tried; CheckpointError if none is good.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      path = os.path.join(self.directory, str(step))
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(**{
            META: ocp.args.JsonRestore()}))[META]
      except Exception as e:  # any failure: this checkpoint is unusable
        warnings.warn(f'Checkpoint {path} is unusable ({type(e).__name__}: {e}); trying an '
                      f'older one.', CheckpointWarning, stacklevel=2)
        continue
      _check_format(meta, abstract_state, path)
      legacy = meta.get('state_format', 1) != STATE_FORMAT
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(_format_1(abstract_state) if legacy
                                            else abstract_state),
            META: ocp.args.JsonRestore()}))
        state = restored[STATE]
        state = _from_format_1(state, abstract_state) if legacy else state
        changed = _changed_leaves(restored[META]['fingerprint'], fingerprint(state))
        if changed:
          raise ValueError(f'its contents differ from what was saved (in '
                           f'{", ".join(changed[:3])}{" ..." if len(changed) > 3 else ""})')
      except Exception as e:  # any failure: this checkpoint is unusable, whatever the cause
        warnings.warn(f'Checkpoint {path} is unusable ({type(e).__name__}: {e}); trying an '
                      f'older one.', CheckpointWarning, stacklevel=2)
        continue
      return state
    if steps:
      raise CheckpointError(f'None of the checkpoints in {self.directory} (steps {steps}) can '
                            f'be used (warnings above say why); move that folder away to '
                            f'start this run afresh.')
    return None

  def close(self):
    """Waits for the last save to finish, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _check_format(meta: dict, abstract_state, path: str):
  """CheckpointError for a checkpoint of an older state layout that this state cannot take.
  Format 1 (before 2026-12-07) kept the adversary's discriminator inside the model's params
  and its optimizer state in `adversary_opt_state`; without objective terms both layouts
  hold the same arrays, so such a checkpoint still resumes."""
  written = meta.get('state_format', 1)
  if written == STATE_FORMAT or (written == 1 and not abstract_state.terms):
    return
  raise CheckpointError(
      f'Checkpoint {path} has state format {written}; this mtl_jax writes and reads format '
      f'{STATE_FORMAT} (objective terms such as the adversary keep their parameters and '
      f'optimizer state in TrainState.terms, no longer inside the model\'s params). Resume '
      f'it with the mtl_jax that wrote it, or start the run afresh in a new --workdir.')


def _format_1(abstract_state) -> dict:
  """A state without objective terms as format 1 saved it: its fields, with an empty
  adversary_opt_state where format 2 has the (empty) terms."""
  fields = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)}
  del fields['terms']
  return {**fields, 'adversary_opt_state': None}


def _from_format_1(restored: dict, abstract_state):
  del restored['adversary_opt_state']
  return type(abstract_state)(**restored, terms={})


def _changed_leaves(saved: dict[str, list[int]], restored: dict[str, list[int]]) -> list[str]:
  return sorted(p for p in saved.keys() | restored.keys() if saved.get(p) != restored.get(p))


class PreemptionWatch:
  """Whether the run was asked to stop (SIGTERM). Under jax.distributed with its preemption
  service, jax's sync point (all processes agree on the step at which to stop); otherwise a
  SIGTERM handler that sets a flag the loop reads after each step. A context manager: the
  previous handler comes back on exit."""

  def __init__(self):
    self._flag = False
    # jax.distributed.initialize starts the preemption service unless
    # jax_enable_preemption_service is off; it then handles SIGTERM itself.
    self._sync = jax_distributed.global_state.preemption_sync_manager is not None
    self._previous = None

  def __enter__(self):
    if not self._sync:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self, step: int) -> bool:
    if self._sync:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag
