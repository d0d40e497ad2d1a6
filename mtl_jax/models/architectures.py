"""Sharing architectures by name: config.model.architecture picks one, config.model.args
holds its own fields (docs/sharing.md)."""

import dataclasses
from collections.abc import Sequence

from mtl_jax.models.base import MultiTaskModel
from mtl_jax.models.encoder import EncoderConfig
from mtl_jax.models.hierarchical import Hierarchical
from mtl_jax.models.moe import MMoESharing, PLESharing
from mtl_jax.models.multitask import HardSharing
from mtl_jax.models.shared_private import SharedPrivate
from mtl_jax.models.soft import SoftSharing
from mtl_jax.tasks import Task

ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    'hard': HardSharing,
    'shared_private': SharedPrivate,
    'mmoe': MMoESharing,
    'ple': PLESharing,
    'soft': SoftSharing,
    'hierarchical': Hierarchical,
}


COMMON_FIELDS = ('encoder_config', 'tasks', 'head_dropout_rate', 'shared_features', 'parent',
                 'name')


def default_args(name: str) -> dict:
  """The architecture's own fields at their defaults (what config.model.args may set)."""
  return {f.name: f.default for f in dataclasses.fields(ARCHITECTURES[name])
          if f.name not in COMMON_FIELDS}


def build(name: str, encoder_config: EncoderConfig, tasks: Sequence[Task], args: dict,
          head_dropout_rate: float = 0.1, shared_features: bool = False) -> MultiTaskModel:
  """The architecture `name` with its own fields from `args`; TypeError or ValueError on a
  field it does not have or a bad value."""
  if name not in ARCHITECTURES:
    raise ValueError(f'unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}.')
  cls = ARCHITECTURES[name]
  own = set(default_args(name))
  unknown = sorted(set(args) - own)
  if unknown:
    raise TypeError(f'no field(s) {unknown}; its fields are {sorted(own)}.')
  model = cls(encoder_config, tuple(tasks), head_dropout_rate, shared_features, **args)
  model.validate()
  return model
