"""One interface for where a run's state lives and how its step and predictions run.

A fit describes what it computes as a `Program` of plain functions of one device's view.
A backend places them: `mtl_jax.parallel.mesh.backend` (jit over named shardings, FSDP and
tensor parallelism) or `mtl_jax.parallel.pmap.backend` (a replicated state, explicit
collectives). `mtl_jax.config.build_backend` picks one from config.parallelism; the loop
that trains never asks which.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np


class Program(NamedTuple):
  """What a fit computes, before any placement on devices."""
  create: Callable[..., Any]  # (pretrained encoder or None) -> a fresh TrainState
  boxed_params: Callable[[], Any]  # () -> the parameters' shapes, boxed with logical axes
  train_step: Callable[..., Callable]  # (axis_name=None) -> (state, batch) -> (state, metrics)
  predict: Callable  # (params, batch) -> predictions


class Backend(NamedTuple):
  """A Program placed on the devices. A state is either the step's (what `step` takes) or
  saved (global arrays, what a checkpoint holds and what `predict` reads)."""
  init: Callable[[Any], Any]  # (pretrained encoder or None) -> a fresh saved state
  abstract: Any  # the saved state's shapes and dtypes, with their shardings
  from_saved: Callable[[Any], Any]
  to_saved: Callable[[Any], Any]
  step: Callable  # (step's state, this process's rows of a batch) -> (state, metrics)
  rows: np.ndarray  # the rows of every global batch that this process feeds
  host_params: Callable[[Any], Any]  # saved state -> its parameters, numpy on every process
  eval_params: Callable[[Any], Any]  # saved state -> the parameters `predict` takes
  predict: Callable  # (eval params, a whole evaluation batch) -> predictions


def placed(abstract, shardings):
  """ShapeDtypeStructs of `abstract` with `shardings` (one sharding, or a tree of them)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
