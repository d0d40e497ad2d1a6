"""Loss weighting and gradient aggregation methods, one module each.

`get(name, **kwargs)` builds the method that module `mtl_jax.weighting.<name>` defines under
the same name; adding a method is adding one module (docs/weighting.md).
"""

import importlib
import inspect
import pkgutil

from mtl_jax.weighting.base import (EmptyState, Method, Needs, StepInfo, chain, combine,
                                    compute_dtype, gram_matrix, head_weights, init_state,
                                    needs_task_gradients)

MODES = ('params', 'representation')
_NOT_METHODS = ('base',)


def names() -> tuple[str, ...]:
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if m.name not in _NOT_METHODS and not m.name.startswith('_')))


def _factory(name: str):
  if name not in names():
    raise ValueError(f'Unknown weighting method {name!r}; known: {", ".join(names())}.')
  return getattr(importlib.import_module(f'{__name__}.{name}'), name)


def get(name: str, **kwargs) -> Method:
  return _factory(name)(**kwargs)


def default_args(name: str) -> dict:
  """The method's keyword arguments and their defaults (what a config may override)."""
  return {k: p.default for k, p in inspect.signature(_factory(name)).parameters.items()}


def needs(name: str) -> Needs:
  """What the method reads, with its default arguments: LOSSES for a loss weighter."""
  return get(name, **default_args(name)).needs
