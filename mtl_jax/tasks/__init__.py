"""Task specs and their registry. Importing this package registers the built-in suite's tasks
and the GLUE, SuperGLUE and MultiNLI tasks."""

from mtl_jax.tasks import builtin as _builtin  # noqa: F401  (registers the built-in suite)
from mtl_jax.tasks import glue as _glue  # noqa: F401  (registers GLUE, SuperGLUE, MultiNLI)
from mtl_jax.tasks.registry import get, names, register
from mtl_jax.tasks.spec import Task, TaskKind, num_choices
