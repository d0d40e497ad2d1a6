"""The import layers of docs/architecture.md: every import of mtl_jax points to its own layer
or one below, and no modules import each other in a circle. Read from the source (ast), so
an import inside a function counts too."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'mtl_jax'

# Module prefix -> layer, lowest first; the longest matching prefix decides. Entry points
# (`__main__` modules) are nobody's import: they sit on top.
LAYERS = {
    'mtl_jax.errors': 0, 'mtl_jax.metrics': 0,
    'mtl_jax.parallel.distributed': 1, 'mtl_jax.progress': 1,
    'mtl_jax.tasks': 2, 'mtl_jax.data': 2, 'mtl_jax.schema': 2,
    'mtl_jax.models': 3, 'mtl_jax.objectives': 3, 'mtl_jax.weighting': 3,
    'mtl_jax.parallel': 4, 'mtl_jax.evaluation': 4,
    'mtl_jax.config': 5,
    'mtl_jax.train': 6,
    'mtl_jax.report': 7,
    'mtl_jax.jobs': 8, 'mtl_jax.bench': 8, 'mtl_jax.generate': 8,
}
ENTRY_POINT = 9


def layer(module: str) -> int:
  if module.endswith('__main__'):
    return ENTRY_POINT
  prefixes = [p for p in LAYERS if module == p or module.startswith(p + '.')]
  if not prefixes:
    raise KeyError(f'{module} is in no layer of tests/test_layers.py (and of '
                   f'docs/architecture.md): add it.')
  return LAYERS[max(prefixes, key=len)]


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports() -> dict[str, set[str]]:
  """module -> the mtl_jax modules it imports (`from a import b` names a.b if that is a
  module, else a)."""
  modules = {module_name(p): p for p in PACKAGE.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found.update(a.name for a in node.names if a.name.startswith('mtl_jax'))
      elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('mtl_jax'):
        for alias in node.names:
          child = f'{node.module}.{alias.name}'
          found.add(child if child in modules else node.module)
    graph[name] = found - {name}
  return graph


def test_every_import_points_to_its_own_layer_or_below():
  upward = [f'{m} (layer {layer(m)}) imports {t} (layer {layer(t)})'
            for m, targets in imports().items() for t in sorted(targets) if layer(t) > layer(m)]
  assert not upward, '\n'.join(upward)


def test_no_modules_import_each_other_in_a_circle():
  graph = imports()
  done, stack = set(), []

  def visit(module):
    if module in stack:
      pytest.fail('import circle: ' + ' -> '.join(stack[stack.index(module):] + [module]))
    if module in done or module not in graph:
      return
    stack.append(module)
    for target in sorted(graph[module]):
      visit(target)
    stack.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


def test_the_check_sees_an_upward_import():
  """The layers are read right: a step importing the main job would be refused."""
  assert layer('mtl_jax.train.step') < layer('mtl_jax.jobs.main')
  assert layer('mtl_jax.parallel.distributed') < layer('mtl_jax.parallel.mesh')
  assert 'mtl_jax.train.loop' in imports()['mtl_jax.jobs.main']
