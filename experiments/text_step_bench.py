"""A text run's train step against a plain causal-LM step on the same packed tokens, and the
packing of the instruction experiment's mixture (issue 19's speed goals).

- Packing: the experiment's batches (experiments/configs/instructions.py, SmolLM2's
  tokenizer) over their first `--packing_steps` steps: real tokens over slots, examples
  dropped and truncated.
- Step: the library's train step of that config (loop.program: CausalLM, one loss per
  task, the weighting method, AdamW, clipping) against a plain step that takes one mean NLL
  over every target token of the same rows with the same decoder, optimizer and clipping,
  both jitted on the same batch. `--rounds` rounds, each timing `--steps` steps of one then
  of the other (their order alternating), after a compile; printed: the median and spread of
  the per-round ratio. A random init of the config's decoder (`--layers` of SmolLM2's 30, to
  fit a CPU's time), its real vocabulary. The multi-task step's compiled temporaries are
  printed against B·S·V·4, the float32 logits' bytes.

  PYTHONPATH=. python experiments/text_step_bench.py [--layers 30 --batch 2 --seq 256]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs import instructions
from mtl_jax import config as config_lib
from mtl_jax.data import text_batches
from mtl_jax.data.text_data import load_text_data, packing_stats
from mtl_jax.models.causal_lm import next_tokens
from mtl_jax.models.decoder import Decoder, segment_mask, segment_positions
from mtl_jax.objectives.language_model import chunked_token_nll
from mtl_jax.train.loop import program
from mtl_jax.train.optimizer import learning_rate_schedule, make_optimizer


def plain_step(config, model_cfg, chunk: int):
  """One mean NLL over all target tokens: the causal-LM step without tasks."""
  decoder = Decoder(model_cfg)
  optimizer = make_optimizer(config.optimizer,
                             learning_rate_schedule(config.optimizer, config.num_steps))

  def loss_fn(params, batch):
    segments = batch['segment_ids']
    positions = segment_positions(segments)
    hidden = decoder.apply({'params': params}, batch['input_ids'], positions,
                           segment_mask(segments, positions)).hidden
    project = decoder.apply({'params': params}, method=Decoder.output_projection)
    nll = chunked_token_nll(hidden, next_tokens(batch['input_ids'], segments),
                            batch['loss_mask'], project, chunk)
    return nll.sum() / jnp.maximum(batch['loss_mask'].sum(), 1.0)

  def step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=0), optimizer


def _timed(step, state, batch, steps: int):
  began = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  return state, (time.perf_counter() - began) / steps


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--layers', type=int, default=30)
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--seq', type=int, default=256)
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--packing_steps', type=int, default=50)
  p.add_argument('--weighting', default='static')
  args = p.parse_args()

  config = config_lib.resolved(instructions.get_config())
  tasks = config_lib.validate(config)
  data = load_text_data(config, config.text.held_out)
  packed = packing_stats(data, config.seed, config.batch_size, range(args.packing_steps))
  result = {'packing': {'steps': args.packing_steps, 'rows': config.batch_size,
                        'seq_len': config.data.seq_len,
                        'examples_per_step': config.text.examples_per_step,
                        'real_fraction': round(packed.real_fraction, 4), **packed._asdict()}}

  config.model.num_layers, config.batch_size, config.data.seq_len = (
      args.layers, args.batch, args.seq)
  config.weighting.name = args.weighting
  method = config_lib.build_weighting(config)
  model, run = program(config, tasks, data, method)
  state = run.create()
  multi = jax.jit(run.train_step(), donate_argnums=0)
  whole = data.step_batches(config.seed, args.batch)(0)[0]
  batch = jax.tree.map(jnp.asarray, {k: whole[k] for k in text_batches.TRAIN_KEYS})
  plain, optimizer = plain_step(config, model.encoder_config.decoder, model.chunk)
  own = jax.tree.map(jnp.copy, state.params['encoder'])  # each step donates its own state
  plain_state = (own, optimizer.init(own))

  tokens = args.batch * args.seq
  compiled = multi.lower(state, batch).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = tokens * model.encoder_config.decoder.vocab_size * 4
  state, _ = _timed(multi, state, batch, 1)  # compiles
  plain_state, _ = _timed(plain, plain_state, batch, 1)
  ratios, multi_times, plain_times = [], [], []
  for r in range(args.rounds):
    if r % 2:
      plain_state, t_plain = _timed(plain, plain_state, batch, args.steps)
      state, t_multi = _timed(multi, state, batch, args.steps)
    else:
      state, t_multi = _timed(multi, state, batch, args.steps)
      plain_state, t_plain = _timed(plain, plain_state, batch, args.steps)
    ratios.append(t_multi / t_plain)
    multi_times.append(t_multi)
    plain_times.append(t_plain)
  result['step'] = {
      'backend': jax.default_backend(), 'layers': args.layers, 'batch': args.batch,
      'seq': args.seq, 'tasks': len(tasks), 'weighting': args.weighting,
      'real_tokens': int((batch['segment_ids'] > 0).sum()), 'rounds': args.rounds,
      'steps_per_round': args.steps,
      'ratio_median': round(float(np.median(ratios)), 4),
      'ratio_min': round(min(ratios), 4), 'ratio_max': round(max(ratios), 4),
      'multi_seconds_median': round(float(np.median(multi_times)), 4),
      'plain_seconds_median': round(float(np.median(plain_times)), 4),
      'multi_temp_bytes': temp, 'multi_temp_over_BSV4': round(temp / logits_bytes, 3)}
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
