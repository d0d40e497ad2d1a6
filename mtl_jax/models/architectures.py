"""Sharing architectures by name: config.model.architecture picks one, config.model.args
holds its own fields (docs/sharing.md); config.model.backbone the backbone it wraps."""

import dataclasses
from collections.abc import Sequence

from mtl_jax.models.backbone import backbone_name
from mtl_jax.models.base import BackboneConfig, MultiTaskModel
from mtl_jax.models.causal_lm import CausalLM
from mtl_jax.models.hierarchical import Hierarchical
from mtl_jax.models.moe import MMoESharing, PLESharing
from mtl_jax.models.multitask import HardSharing
from mtl_jax.models.shared_private import SharedPrivate
from mtl_jax.models.soft import SoftSharing
from mtl_jax.tasks import Task, TaskKind

# Architectures of a run whose tasks are all text-to-text (TaskKind.TEXT): the language
# model itself; the adapters issue adds its LoRA-family architectures here.
TEXT_ARCHITECTURES: dict[str, type[MultiTaskModel]] = {'hard': CausalLM}
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


def own_fields(cls: type[MultiTaskModel]) -> dict:
  """An architecture's own fields at their defaults (what config.model.args may set)."""
  return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in COMMON_FIELDS}


def default_args(name: str) -> dict:
  """Architecture `name`'s own fields at their defaults."""
  return own_fields(ARCHITECTURES[name])



def supporting(backbone: str) -> list[str]:
  """The architectures that work with `backbone` (backbone.BACKBONES)."""
  return sorted(n for n, cls in ARCHITECTURES.items() if backbone in cls.backbones)


def refusal(architecture: str | type[MultiTaskModel], backbone: str) -> str | None:
  """Why an architecture (by name, or its class) cannot run on `backbone`, in one line; None
  when it can."""
  cls = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
  if backbone in cls.backbones:
    return None
  name = next((n for n, c in ARCHITECTURES.items() if c is cls), cls.__name__)
  return (f'architecture {name!r} does not work with the {backbone} backbone (it works with '
          f'{list(cls.backbones)}); with the {backbone}, use one of {supporting(backbone)}.')


def build(name: str, encoder_config: BackboneConfig, tasks: Sequence[Task], args: dict,
          head_dropout_rate: float = 0.1, shared_features: bool = False) -> MultiTaskModel:
  """The architecture `name` over the backbone `encoder_config` configures (an
  EncoderConfig or a backbone.DecoderBackboneConfig), with its own fields from `args`;
  TypeError or ValueError on a field it does not have, a bad value or a backbone it does not
  work with."""
  text = bool(tasks) and all(t.kind is TaskKind.TEXT for t in tasks)
  if text:
    if name not in TEXT_ARCHITECTURES:
      raise ValueError(f'architecture {name!r} does not train text-to-text tasks; choose from '
                       f'{sorted(TEXT_ARCHITECTURES)}.')
    cls = TEXT_ARCHITECTURES[name]
  elif name not in ARCHITECTURES:
    raise ValueError(f'unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}.')
  else:
    cls = ARCHITECTURES[name]
  refused = refusal(cls, backbone_name(encoder_config))
  if refused:
    raise ValueError(refused)
  own = set(own_fields(cls))
  unknown = sorted(set(args) - own)
  if unknown:
    raise TypeError(f'no field(s) {unknown}; its fields are {sorted(own)}.')
  model = cls(encoder_config, tuple(tasks), head_dropout_rate, shared_features, **args)
  model.validate()
  return model
