"""Equal weighting (EW): λ_i = 1, the loss is Σ_i L_i."""

from mtl_jax.weighting.base import Method
from mtl_jax.weighting.static import static


def equal() -> Method:
  return static()
