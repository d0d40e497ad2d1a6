"""A name -> Task registry. Task modules register their specs on import."""

from mtl_jax.tasks.spec import Task

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
  if task.name in _REGISTRY and _REGISTRY[task.name] != task:
    raise ValueError(f'Task {task.name!r} is already registered with another spec.')
  _REGISTRY[task.name] = task
  return task


def get(name: str) -> Task:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f'Unknown task {name!r}. Known tasks: {", ".join(sorted(_REGISTRY))}.'
                     ) from None


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))
