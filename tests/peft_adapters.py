"""The LoRA adapters that PEFT's reference was made from (experiments/reference/
peft_reference.py): seeded adapters over tests/data/tiny_llama, for two architectures, and
the folders write_peft makes of them.

  PYTHONPATH=. python -m tests.peft_adapters  # writes tests/data/tiny_llama_peft/<name>/
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.models import adapters, llama_checkpoint
from mtl_jax.models.decoder import Decoder

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
BASE = os.path.join(DATA, 'tiny_llama')
FOLDER = os.path.join(DATA, 'tiny_llama_peft')
# name -> (adapter config, the task whose LoRA PEFT loads)
CASES = {
    'lora': (adapters.AdapterConfig('lora', ('q', 'k', 'v', 'o', 'gate', 'up', 'down'),
                                    rank=4, alpha=8.0), None),
    'shared_task_lora_task1': (adapters.AdapterConfig(
        'shared_task_lora', ('q', 'v', 'down'), rank=2, alpha=3.0, num_tasks=3), 1),
}


def adapted(name: str):
  """(decoder config, the base's parameters with seeded adapters, adapter config, task)."""
  adapter_cfg, task = CASES[name]
  cfg, base = llama_checkpoint.read_hf(BASE)
  tokens = jnp.zeros((1, 2), jnp.int32)
  mask = jnp.ones((1, 2, 2), bool)
  shapes = jax.eval_shape(lambda: nn.unbox(Decoder(cfg, adapter=adapters.hook(adapter_cfg)).init(
      jax.random.key(0), tokens, tokens, mask, tokens))['params'])
  rng = np.random.default_rng(sum(map(ord, name)))

  def leaf(path, shape):
    keys = tuple(k.key for k in path)
    if 'adapter' not in keys:
      node = base
      for key in keys:
        node = node[key]
      return node
    return rng.normal(0, 0.2, shape.shape).astype(np.float32)  # B too: a check that can fail
  return cfg, jax.tree_util.tree_map_with_path(leaf, shapes), adapter_cfg, task


if __name__ == '__main__':
  for case in CASES:
    _, params, adapter_cfg, task = adapted(case)
    print('wrote', adapters.write_peft(os.path.join(FOLDER, case), params, adapter_cfg, task,
                                       base_model='tiny_llama'))
