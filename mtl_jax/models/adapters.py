"""LoRA-family adapters on the decoder's projections (docs/llm.md, issue 20).

The decoder calls its adapter hook on every projection's output (models/decoder.py's
`Projection`): `adapter(projection=name)` is a module called as (x, y, task_ids) -> y, with
x the projection's input (..., *in_shape), y its output (..., *features) and task_ids
(B, S) the task of each token (or None). `hook(cfg)` builds that hook for one adapter
architecture; a projection that `cfg.targets` does not name passes y through and has no
parameters.

Each architecture adds (α / r) · Δ(x) to y, with x flattened to its `fan_in` inputs and Δ
onto the `fan_out` outputs. A matrices (fan_in, r) start uniform in ±1/√fan_in (PEFT's
kaiming-uniform with a = √5), B matrices (r, fan_out) at zero, so every architecture starts
equal to the base model:
  - 'lora' (hard sharing): Δ = x A B, one adapter for every task;
  - 'task_lora' (one adapter per task, the STL-style baseline): Δ = x A_t B_t for a token of
    task t;
  - 'shared_task_lora' (shared-private): x A B + x A_t B_t;
  - 'mtl_lora' (MTL-LoRA, Yang et al. 2024): a shared A, a per-task r × r transform Λ_t in
    the low-rank space (starting at the identity) and n shared up-projections B_j mixed by
    per-task weights softmax(w_t): Δ = Σ_j softmax(w_t)_j · x A Λ_t B_j;
  - 'hydra_lora' (HydraLoRA, Tian et al. 2024): a shared A and n B matrices mixed per token
    by a router: Δ = Σ_j softmax(x W_r)_j · x A B_j.
Dropout (rate cfg.dropout) applies to x before A, as in PEFT.
"""

import functools
import json
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from mtl_jax.models import hf_folder, llama_checkpoint
from mtl_jax.models.decoder import PROJECTIONS

ARCHITECTURES = ('lora', 'task_lora', 'shared_task_lora', 'mtl_lora', 'hydra_lora')
PER_TASK = ('task_lora', 'shared_task_lora', 'mtl_lora')  # read each token's task id


class AdapterConfig(NamedTuple):
  architecture: str
  targets: tuple[str, ...]  # projection names (decoder.PROJECTIONS)
  rank: int
  alpha: float
  dropout: float = 0.0
  num_tasks: int = 1  # the per-task architectures' adapters
  num_heads: int = 2  # B matrices of mtl_lora and hydra_lora


def check(cfg: AdapterConfig, fan: Callable[[str], tuple[int, int]] | None = None):
  """ValueError naming the bad setting; `fan(projection) -> (fan_in, fan_out)`, when given,
  bounds the rank by each target's min(fan_in, fan_out)."""
  if cfg.architecture not in ARCHITECTURES:
    raise ValueError(f'architecture: {cfg.architecture!r} is not one of {ARCHITECTURES}.')
  unknown = sorted(set(cfg.targets) - set(PROJECTIONS))
  if unknown or not cfg.targets:
    raise ValueError(f'targets: {unknown or "none"} {"is" if len(unknown) == 1 else "are"} not '
                     f'among the projections {PROJECTIONS}.')
  if cfg.rank < 1:
    raise ValueError(f'rank: must be >= 1, got {cfg.rank}.')
  if not cfg.alpha > 0:
    raise ValueError(f'alpha: must be > 0, got {cfg.alpha}.')
  if not 0 <= cfg.dropout < 1:
    raise ValueError(f'dropout: must be in [0, 1), got {cfg.dropout}.')
  if cfg.num_tasks < 1 or cfg.num_heads < 1:
    raise ValueError(f'num_tasks and num_heads: must be >= 1, got {cfg.num_tasks} and '
                     f'{cfg.num_heads}.')
  for name in (cfg.targets if fan else ()):
    limit = min(fan(name))
    if cfg.rank > limit:
      raise ValueError(f'rank: {cfg.rank} exceeds min(fan_in, fan_out) = {limit} of the '
                       f'{name!r} projection.')


def hook(cfg: AdapterConfig) -> Callable[..., nn.Module]:
  """The decoder's adapter hook for `cfg` (checked first)."""
  check(cfg)
  return functools.partial(Adapter, cfg)


def _a_init(key, shape, dtype=jnp.float32):
  """Uniform in ±1/√fan_in, fan_in being the second-to-last axis: PEFT's A init."""
  bound = 1.0 / math.sqrt(shape[-2])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape)


class Adapter(nn.Module):
  """One projection's adapter (see the module docstring). x is (B, S, *in_shape) and y
  (B, S, *features), as the decoder's Projection calls it; float32 parameters, the update
  computed in float32 and added to y in y's dtype. Dropout on x runs when the apply call
  has a 'dropout' rng (training), not otherwise."""
  cfg: AdapterConfig
  projection: str

  @nn.compact
  def __call__(self, x, y, task_ids):
    cfg = self.cfg
    if self.projection not in cfg.targets:
      return y
    fan_in, fan_out = math.prod(x.shape[2:]), math.prod(y.shape[2:])
    flat = x.reshape(-1, fan_in).astype(jnp.float32)
    if cfg.dropout:
      flat = nn.Dropout(cfg.dropout)(flat, deterministic=not self.has_rng('dropout'))
    tasks = None
    if cfg.architecture in PER_TASK:
      if task_ids is None:
        raise ValueError(f'The {cfg.architecture} adapters need each token\'s task id.')
      tasks = jax.nn.one_hot(task_ids.reshape(-1), cfg.num_tasks, dtype=jnp.float32)
    delta = _DELTAS[cfg.architecture](self, cfg, flat, tasks, fan_out)
    update = (cfg.alpha / cfg.rank) * delta
    return y + update.reshape(y.shape).astype(y.dtype)


def _pair(module, cfg, fan_in, fan_out, prefix='', tasks=()):
  """(A, B) parameters: A (*tasks, fan_in, r) random, B (*tasks, r, fan_out) zero."""
  a = module.param(prefix + 'a', _a_init, (*tasks, fan_in, cfg.rank))
  b = module.param(prefix + 'b', nn.initializers.zeros, (*tasks, cfg.rank, fan_out))
  return a, b


def _lora(module, cfg, x, tasks, fan_out):
  a, b = _pair(module, cfg, x.shape[-1], fan_out)
  return x @ a @ b


def _task_lora(module, cfg, x, tasks, fan_out):
  """Each token through its own task's pair: every task's x A_t, the others' zeroed."""
  a, b = _pair(module, cfg, x.shape[-1], fan_out, 'task_', (cfg.num_tasks,))
  low = jnp.einsum('ni,tir->ntr', x, a) * tasks[:, :, None]
  return jnp.einsum('ntr,tro->no', low, b)


def _shared_task_lora(module, cfg, x, tasks, fan_out):
  return _lora(module, cfg, x, tasks, fan_out) + _task_lora(module, cfg, x, tasks, fan_out)


def _mtl_lora(module, cfg, x, tasks, fan_out):
  a = module.param('a', _a_init, (x.shape[-1], cfg.rank))
  transform = module.param('task_transform', _identity_init, (cfg.num_tasks, cfg.rank, cfg.rank))
  b = module.param('b', nn.initializers.zeros, (cfg.num_heads, cfg.rank, fan_out))
  mix = module.param('task_mix', nn.initializers.zeros, (cfg.num_tasks, cfg.num_heads))
  low = jnp.einsum('nr,trs,nt->ns', x @ a, transform, tasks)
  weights = tasks @ jax.nn.softmax(mix, axis=-1)  # (N, heads): each token's task's mix
  return jnp.einsum('ns,jso,nj->no', low, b, weights)


def _hydra_lora(module, cfg, x, tasks, fan_out):
  a = module.param('a', _a_init, (x.shape[-1], cfg.rank))
  b = module.param('b', nn.initializers.zeros, (cfg.num_heads, cfg.rank, fan_out))
  router = module.param('router', _a_init, (x.shape[-1], cfg.num_heads))
  weights = jax.nn.softmax(x @ router, axis=-1)  # (N, heads) per token
  return jnp.einsum('nr,jro,nj->no', x @ a, b, weights)


_DELTAS = {'lora': _lora, 'task_lora': _task_lora, 'shared_task_lora': _shared_task_lora,
           'mtl_lora': _mtl_lora, 'hydra_lora': _hydra_lora}


MERGEABLE = ('lora', 'task_lora', 'shared_task_lora', 'mtl_lora')


def _check_mergeable(cfg: AdapterConfig, task: int | None):
  if cfg.architecture not in MERGEABLE:
    raise ValueError(f'{cfg.architecture} cannot be merged into the base weights: its '
                     f'router mixes the B matrices per token.')
  if cfg.architecture in PER_TASK and task is None:
    raise ValueError(f'{cfg.architecture} merges one task at a time; name the task.')


def lora_pair(adapter: dict, cfg: AdapterConfig, task: int | None
              ) -> tuple[jax.Array, jax.Array]:
  """(A (*layers, fan_in, r'), B (*layers, r', fan_out)), the one LoRA pair that computes a
  `task` token's update of a plain-LoRA architecture: the shared pair (lora), the task's
  (task_lora), or both side by side (shared_task_lora: [A A_t] and [B; B_t] compute
  x A B + x A_t B_t at rank r' = 2r)."""
  parts = []
  if cfg.architecture in ('lora', 'shared_task_lora'):
    parts.append((adapter['a'], adapter['b']))
  if cfg.architecture in ('task_lora', 'shared_task_lora'):
    parts.append((adapter['task_a'][..., task, :, :], adapter['task_b'][..., task, :, :]))
  return (jnp.concatenate([a for a, _ in parts], -1),
          jnp.concatenate([b for _, b in parts], -2))


def weight_update(adapter: dict, cfg: AdapterConfig, task: int | None) -> jax.Array:
  """ΔW (*layers, fan_in, fan_out) of one projection's adapter parameters for the tokens of
  `task` (None for 'lora'), in float32: what adding to the kernel computes the same."""
  _check_mergeable(cfg, task)
  if cfg.architecture == 'mtl_lora':
    mix = jax.nn.softmax(adapter['task_mix'][..., task, :], axis=-1)  # (*layers, heads)
    up = jnp.einsum('...j,...jro->...ro', mix, adapter['b'])
    delta = adapter['a'] @ adapter['task_transform'][..., task, :, :] @ up
  else:
    a, b = lora_pair(adapter, cfg, task)
    delta = a @ b
  return (cfg.alpha / cfg.rank) * delta


def merge(params: dict, cfg: AdapterConfig, task: int | None = None) -> dict:
  """The base model's parameters with each adapted projection's kernel replaced by
  kernel + ΔW (summed in float32, then cast to the kernel's dtype) and the adapters dropped:
  a plain decoder with these parameters computes what the adapted one computes for `task`."""
  _check_mergeable(cfg, task)

  def walk(node):
    if not isinstance(node, dict):
      return node
    if 'adapter' in node:  # an adapted projection (an untargeted one has no parameters)
      kernel = node['kernel']
      delta = weight_update(node['adapter'], cfg, task)
      merged = kernel.astype(jnp.float32) + delta.reshape(kernel.shape)
      return {**{k: v for k, v in node.items() if k != 'adapter'},
              'kernel': merged.astype(kernel.dtype)}
    return {k: walk(v) for k, v in node.items()}
  return walk(params)


# ----------------------------------------------------------------------------------------
# PEFT's adapter format: adapter_config.json and adapter_model.safetensors, one folder per
# adapter, with PEFT's key names and torch layouts (lora_A (r, fan_in), lora_B (fan_out, r)).

PEFT_CONFIG_FILE = 'adapter_config.json'
PEFT_WEIGHTS_FILE = 'adapter_model.safetensors'
PEFT_FORMS = ('lora', 'task_lora', 'shared_task_lora')


def _projection_module(path: tuple[str, ...]) -> str:
  """The Hugging Face module of our projection kernel `path`, with an {i} for the layer."""
  return llama_checkpoint.LEAVES[path].hf.removesuffix('.weight')


def peft_pairs(params: dict, cfg: AdapterConfig, task: int | None = None
               ) -> dict[tuple[str, ...], tuple[jax.Array, jax.Array]]:
  """Our kernel path -> the lora_pair that PEFT loads for `task`, for each adapted
  projection."""
  if cfg.architecture not in PEFT_FORMS:
    raise ValueError(f'{cfg.architecture} has no PEFT form (PEFT holds plain LoRA pairs); '
                     f'export its merged weights instead (adapters.merge).')
  _check_mergeable(cfg, task)
  pairs = {}
  for block, names in (('attention', ('q', 'k', 'v', 'o')), ('mlp', ('gate', 'up', 'down'))):
    for name in names:
      adapter = params['layers'][block][name].get('adapter')
      if adapter is None:
        continue
      pairs[('layers', block, name, 'kernel')] = lora_pair(adapter, cfg, task)
  return pairs


def write_peft(folder: str, params: dict, cfg: AdapterConfig, task: int | None = None,
               base_model: str = '') -> str:
  """Writes the LoRA that PEFT loads for `task` (see peft_pairs) into `folder` (which must
  not exist or be empty): float32 tensors, and a config whose lora_alpha / r is ours
  (α / r). `base_model` goes to base_model_name_or_path. Returns `folder`."""
  pairs = peft_pairs(params, cfg, task)
  rank = next(iter(pairs.values()))[0].shape[-1]
  tensors = {}
  for path, (a, b) in pairs.items():
    module = 'base_model.model.' + _projection_module(path)
    for layer in range(a.shape[0]):
      tensors[module.format(i=layer) + '.lora_A.weight'] = np.ascontiguousarray(
          np.asarray(a[layer], np.float32).T)
      tensors[module.format(i=layer) + '.lora_B.weight'] = np.ascontiguousarray(
          np.asarray(b[layer], np.float32).T)
  targets = sorted({_projection_module(path).rsplit('.', 1)[-1] for path in pairs})
  config = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': rank,
            'lora_alpha': cfg.alpha * rank / cfg.rank, 'lora_dropout': cfg.dropout,
            'target_modules': targets, 'bias': 'none', 'fan_in_fan_out': False,
            'use_rslora': False, 'init_lora_weights': True, 'inference_mode': True,
            'base_model_name_or_path': base_model}
  hf_folder.require_empty(folder)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, PEFT_CONFIG_FILE), 'w') as f:
    json.dump(config, f, indent=2)
    f.write('\n')
  safetensors.numpy.save_file(tensors, os.path.join(folder, PEFT_WEIGHTS_FILE),
                              metadata={'format': 'pt'})
  return folder
