"""The worked example of docs/weighting.md: GLS against autodiff of its own objective."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import weighting
from weighting_harness import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_weights_are_the_gradient_of_the_geometric_mean():
  losses = jnp.array([0.3, 1.7, 0.9, 2.4])
  expected = jax.grad(lambda l: jnp.prod(l) ** (1 / 4))(losses)
  _, weights, _ = run(weighting.get('gls', eps=0.0), np.eye(4), losses)
  np.testing.assert_allclose(weights, expected, rtol=1e-5)


def test_absent_task_is_left_out_of_the_mean():
  losses = jnp.array([0.5, 0.0, 2.0])
  _, weights, _ = run(weighting.get('gls'), np.eye(3), losses, present=[True, False, True])
  expected = jax.grad(lambda l: jnp.sqrt(l[0] * l[1]))(losses[jnp.array([0, 2])])
  np.testing.assert_allclose(weights[jnp.array([0, 2])], expected, rtol=1e-5)
  assert weights[1] == 0


def test_docs_show_the_module_source():
  with open(os.path.join(ROOT, 'docs/weighting.md')) as f:
    doc = f.read()
  with open(os.path.join(ROOT, 'mtl_jax/weighting/gls.py')) as f:
    source = f.read()
  assert f'```python\n{source}```' in doc
  assert len(source.splitlines()) < 50
