"""Sharing architectures by name: config.model.architecture picks one, config.model.args
holds its own fields (docs/sharing.md); config.model.backbone the backbone it wraps."""

import dataclasses
from collections.abc import Sequence

from mtl_jax.models.backbone import backbone_name
from mtl_jax.models.base import BackboneConfig, MultiTaskModel
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


def supporting(backbone: str) -> list[str]:
  """The architectures that work with `backbone` (backbone.BACKBONES)."""
  return sorted(n for n, cls in ARCHITECTURES.items() if backbone in cls.backbones)


def refusal(name: str, backbone: str) -> str | None:
  """Why architecture `name` cannot run on `backbone`, in one line; None when it can."""
  if backbone in ARCHITECTURES[name].backbones:
    return None
  return (f'architecture {name!r} does not work with the {backbone} backbone (it works with '
          f'{list(ARCHITECTURES[name].backbones)}); with the {backbone}, use one of '
          f'{supporting(backbone)}.')


def build(name: str, encoder_config: BackboneConfig, tasks: Sequence[Task], args: dict,
          head_dropout_rate: float = 0.1, shared_features: bool = False) -> MultiTaskModel:
  """The architecture `name` over the backbone `encoder_config` configures (an
  EncoderConfig or a backbone.DecoderBackboneConfig), with its own fields from `args`;
  TypeError or ValueError on a field it does not have, a bad value or a backbone it does not
  work with."""
  if name not in ARCHITECTURES:
    raise ValueError(f'unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}.')
  refused = refusal(name, backbone_name(encoder_config))
  if refused:
    raise ValueError(refused)
  cls = ARCHITECTURES[name]
  own = set(default_args(name))
  unknown = sorted(set(args) - own)
  if unknown:
    raise TypeError(f'no field(s) {unknown}; its fields are {sorted(own)}.')
  model = cls(encoder_config, tuple(tasks), head_dropout_rate, shared_features, **args)
  model.validate()
  return model
