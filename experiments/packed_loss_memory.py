"""Memory of a text run's train step: the chunked NLL against whole (B, S, V) logits.

The step is the library's own (loop.program of experiments/configs/instructions.py: CausalLM
over SmolLM2-135M's shape, one loss per task, the weighting method, AdamW with clipping),
with per-layer remat 'full' and bfloat16 compute, on packed rows of `--batch` × `--seq`.
CausalLM computes the NLL `--chunk` positions at a time (each chunk rematerialised); with a
chunk as long as the rows it holds every position's logits at once, the reference. Both are
compiled ahead of time from abstract shapes (nothing is allocated, nothing runs), and
compiled.memory_analysis()'s temporary bytes are printed against B·S·V·4, the bytes of the
float32 logits alone.

  PYTHONPATH=. python experiments/packed_loss_memory.py [--batch 4 --seq 2048 --chunk 512]
"""

import argparse
import json

import jax
import jax.numpy as jnp

from experiments.configs import instructions
from mtl_jax import config as config_lib
from mtl_jax.data import text_batches
from mtl_jax.data.text_data import load_text_data
from mtl_jax.train.loop import program


def temporaries(config, tasks, data, chunk: int) -> int:
  """The compiled train step's temporary bytes, CausalLM computing `chunk` positions' logits
  at a time."""
  config = config.copy_and_resolve_references()
  config.model.args = {'chunk': chunk}
  _, run = program(config, tasks, data, config_lib.build_weighting(config))
  state = jax.eval_shape(run.create)
  ints = jax.ShapeDtypeStruct((config.batch_size, config.data.seq_len), jnp.int32)
  floats = jax.ShapeDtypeStruct(ints.shape, jnp.float32)
  batch = {'input_ids': ints, 'segment_ids': ints, 'loss_mask': floats, 'labels': {},
           'label_masks': {t.name: floats for t in tasks}}
  assert set(batch) == set(text_batches.TRAIN_KEYS)
  compiled = jax.jit(run.train_step()).lower(state, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--seq', type=int, default=2048)
  p.add_argument('--chunk', type=int, default=512)
  p.add_argument('--layers', type=int, default=0, help="0: the model's own")
  args = p.parse_args()
  config = config_lib.resolved(instructions.get_config())
  config.model.dtype, config.model.remat = 'bfloat16', 'full'
  config.batch_size, config.data.seq_len = args.batch, args.seq
  config.model.max_len = max(config.model.max_len, args.seq)
  config.model.num_layers = args.layers or config.model.num_layers
  tasks = config_lib.validate(config)
  data = load_text_data(config, ())
  logits_bytes = args.batch * args.seq * data.vocab_size * 4
  result = {'batch': args.batch, 'seq': args.seq, 'vocab': data.vocab_size,
            'layers': config.model.num_layers, 'tasks': len(tasks), 'chunk': args.chunk,
            'logits_bytes_BSV4': logits_bytes, 'backend': jax.default_backend()}
  for name, chunk in (('chunked', args.chunk), ('whole_logits', args.seq)):
    temp = temporaries(config, tasks, data, chunk)
    result[f'{name}_temp_bytes'] = temp
    result[f'{name}_temp_over_BSV4'] = round(temp / logits_bytes, 3)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
