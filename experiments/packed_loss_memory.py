"""Memory of a packed causal-LM train step: the chunked NLL against whole (B, S, V) logits.

The step (SmolLM2-135M's shape by default: 30 layers, 576 wide, 49,152-token vocabulary,
tied; AdamW; per-layer remat 'full'; bfloat16 compute) takes packed rows and returns the
per-task token-mean losses' sum, with the NLL either from `chunked_token_nll` (the targets
first, `--chunk` positions at a time, each chunk rematerialised) or from the whole logits.
Both are compiled ahead of time from abstract shapes (nothing is allocated, nothing runs),
and compiled.memory_analysis()'s temporary bytes are printed against B·S·V·4, the bytes of
the float32 logits alone.

  PYTHONPATH=. python experiments/packed_loss_memory.py [--batch 4 --seq 2048 --chunk 512]
"""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import optax

from mtl_jax.models.decoder import Decoder, DecoderConfig, segment_mask
from mtl_jax.objectives.language_model import chunked_token_nll, task_token_losses

SMOLLM2 = DecoderConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                        num_kv_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                        rope_theta=100000.0, dtype='bfloat16', remat='full')
NUM_TASKS = 8


def whole_logits_nll(hidden, targets, loss_mask, logits_fn):
  """The reference: every position's float32 logits at once."""
  logits = logits_fn(hidden).astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.where(loss_mask > 0, nll, 0.0)


def make_step(cfg: DecoderConfig, chunk: int | None):
  model, optimizer = Decoder(cfg), optax.adamw(1e-4)

  def loss_fn(params, rows):
    out = model.apply({'params': params}, rows['tokens'], rows['positions'],
                      segment_mask(rows['segment_ids'], rows['positions']))
    logits_fn = lambda h: model.apply({'params': params}, h, method=Decoder.logits)
    nll = (whole_logits_nll(out.hidden, rows['targets'], rows['loss_mask'], logits_fn)
           if chunk is None else chunked_token_nll(out.hidden, rows['targets'],
                                                   rows['loss_mask'], logits_fn, chunk))
    return task_token_losses(nll, rows['loss_mask'], rows['task_ids'], NUM_TASKS)[0].sum()

  def step(params, opt_state, rows):
    loss, grads = jax.value_and_grad(loss_fn)(params, rows)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def init(key):
    z = jnp.zeros((1, 4), jnp.int32)
    params = model.init(key, z, z, segment_mask(z + 1, z))['params']
    return params, optimizer.init(params)

  return init, step


def temporaries(cfg: DecoderConfig, batch: int, seq: int, chunk: int | None) -> int:
  init, step = make_step(cfg, chunk)
  params, opt_state = jax.eval_shape(init, jax.random.key(0))
  ints = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  rows = dict(tokens=ints, positions=ints, segment_ids=ints, targets=ints, task_ids=ints,
              loss_mask=jax.ShapeDtypeStruct((batch, seq), jnp.float32))
  compiled = jax.jit(step).lower(params, opt_state, rows).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--seq', type=int, default=2048)
  p.add_argument('--chunk', type=int, default=512)
  p.add_argument('--layers', type=int, default=SMOLLM2.num_layers)
  args = p.parse_args()
  cfg = dataclasses.replace(SMOLLM2, num_layers=args.layers)
  logits_bytes = args.batch * args.seq * cfg.vocab_size * 4
  result = {'batch': args.batch, 'seq': args.seq, 'vocab': cfg.vocab_size,
            'layers': cfg.num_layers, 'chunk': args.chunk,
            'logits_bytes_BSV4': logits_bytes, 'backend': jax.default_backend()}
  for name, chunk in (('chunked', args.chunk), ('whole_logits', None)):
    temp = temporaries(cfg, args.batch, args.seq, chunk)
    result[f'{name}_temp_bytes'] = temp
    result[f'{name}_temp_over_BSV4'] = round(temp / logits_bytes, 3)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
