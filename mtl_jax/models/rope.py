"""Rotary position embeddings (RoFormer) with the scalings of the Llama family.

`inverse_frequencies` gives the per-pair rotation frequencies θ_j of a head of size d
(j = 0 .. d/2 - 1) and the factor the cos/sin tables are multiplied by, for each rope type
that transformers' `ROPE_INIT_FUNCTIONS` defines:

  none     θ_j = base^(-2j/d)                                   (transformers' 'default')
  linear   θ_j / factor                                          (position interpolation)
  dynamic  base' = base·(factor·s/m - (factor - 1))^(d/(d-2)) once the sequence length s
           exceeds m = max_position_embeddings (dynamic NTK scaling); s is known only when
           the positions are, so the model calls this with s = max(position) + 1
  llama3   long wavelengths divided by factor, short ones kept, a smooth ramp between
           (Llama 3.1's low_freq_factor / high_freq_factor around original_max_position_embeddings)
  yarn     interpolation and extrapolation blended by a linear ramp over the dimensions
           between beta_fast and beta_slow rotations, and an attention factor
           0.1·mscale·ln(factor) + 1 (Peng et al. 2023, "YaRN")

tests/test_rope.py checks each against the frequencies transformers computes
(tests/data/rope_reference.json, experiments/reference/llama_parity_reference.py).
The rotation is transformers' (and Meta's Hugging Face layout): a head's first half and
second half form the pairs (rotate_half), not interleaved neighbours as in llama.cpp.
"""

import math
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ('none', 'linear', 'dynamic', 'llama3', 'yarn')
ALIASES = {'default': 'none'}  # transformers' name for the unscaled rope


def rope_type(scaling: Mapping | None) -> str:
  """The rope type a Hugging Face `rope_scaling` / `rope_parameters` dict names."""
  if not scaling:
    return 'none'
  name = scaling.get('rope_type', scaling.get('type', 'default'))
  name = ALIASES.get(name, name)
  if name not in ROPE_TYPES:
    raise ValueError(f'rope type {name!r} is not supported; supported: {ROPE_TYPES} '
                     "('default' is 'none').")
  return name


def _required(scaling: Mapping, key: str, kind: str) -> float:
  if key not in scaling:
    raise ValueError(f'rope type {kind!r} needs rope_scaling[{key!r}].')
  return float(scaling[key])


def _base(head_dim: int, base: float) -> np.ndarray:
  return 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def _llama3(inv_freq: np.ndarray, scaling: Mapping) -> np.ndarray:
  factor = _required(scaling, 'factor', 'llama3')
  low = _required(scaling, 'low_freq_factor', 'llama3')
  high = _required(scaling, 'high_freq_factor', 'llama3')
  context = _required(scaling, 'original_max_position_embeddings', 'llama3')
  wavelength = 2 * math.pi / inv_freq
  scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
  smooth = (context / wavelength - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelength >= context / high) & (wavelength <= context / low)
  return np.where(medium, smoothed, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(head_dim: int, base: float, scaling: Mapping, max_positions: int
          ) -> tuple[np.ndarray, float]:
  factor = _required(scaling, 'factor', 'yarn')
  original = scaling.get('original_max_position_embeddings') or max_positions
  attention = scaling.get('attention_factor')
  if attention is None:
    mscale, mscale_all_dim = scaling.get('mscale'), scaling.get('mscale_all_dim')
    attention = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                 if mscale and mscale_all_dim else _yarn_mscale(factor))
  beta_fast, beta_slow = scaling.get('beta_fast') or 32, scaling.get('beta_slow') or 1

  def dimension(rotations):  # the dimension that turns `rotations` times over `original`
    return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low, high = dimension(beta_fast), dimension(beta_slow)
  if scaling.get('truncate', True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  high = high + 0.001 if low == high else high  # no division by zero
  ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
  extrapolation = 1 - ramp  # 1: keep the frequency (high ones), 0: interpolate (low ones)
  inv_freq = _base(head_dim, base)
  return inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation, float(attention)


def inverse_frequencies(head_dim: int, base: float, scaling: Mapping | None,
                        max_positions: int) -> tuple[np.ndarray, float]:
  """(θ_j, j < head_dim/2, as float64; the attention factor) for the rope in `scaling`
  (a Hugging Face rope_scaling dict, or None). A dynamic rope's unscaled frequencies:
  `dynamic_frequencies` scales them for a sequence length."""
  kind = rope_type(scaling)
  if head_dim % 2:
    raise ValueError(f'head_dim {head_dim} is odd: rotary embeddings rotate pairs.')
  if scaling and float(scaling.get('partial_rotary_factor', 1.0)) != 1.0:
    raise ValueError('partial_rotary_factor != 1 (rotating part of a head) is not supported.')
  if kind == 'yarn':
    return _yarn(head_dim, base, scaling, max_positions)
  inv_freq = _base(head_dim, base)
  if kind == 'linear':
    inv_freq = inv_freq / _required(scaling, 'factor', kind)
  elif kind == 'llama3':
    inv_freq = _llama3(inv_freq, scaling)
  elif kind == 'dynamic':
    _required(scaling, 'factor', kind)
  return inv_freq, 1.0


def dynamic_frequencies(head_dim: int, base: float, factor: float, max_positions: int,
                        seq_len) -> jnp.ndarray:
  """Dynamic NTK frequencies for a (traced) sequence length: the base grows once seq_len
  passes max_positions, as transformers' dynamic rope does for max(position_ids) + 1."""
  seq_len = jnp.maximum(jnp.asarray(seq_len, jnp.float32), max_positions)
  scaled = base * (factor * seq_len / max_positions - (factor - 1)) ** (head_dim / (head_dim - 2))
  return 1.0 / scaled ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def rotate(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: jnp.ndarray,
           attention_factor: float = 1.0) -> jnp.ndarray:
  """x (B, S, H, d) rotated by position (B, S): the pair (x_j, x_{j+d/2}) turns by
  position·θ_j. In float32 whatever x's dtype; the output has x's dtype."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq.astype(jnp.float32)  # (B,S,d/2)
  cos = (jnp.cos(angles) * attention_factor)[:, :, None, :]
  sin = (jnp.sin(angles) * attention_factor)[:, :, None, :]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin],
                         axis=-1).astype(x.dtype)
