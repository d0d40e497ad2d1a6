"""The training step's MFU of a 1B Llama in bfloat16 on one accelerator (prepared for a GPU).

Llama-3.2-1B's shape (16 layers, 2048 wide, 32 query / 8 KV heads of 64, FFN 8192, vocabulary
128256, tied embeddings, llama3 rope), random init: float32 parameters and AdamW state,
bfloat16 activations and matmul inputs with float32 accumulation (models/decoder.py),
per-layer remat, the causal-LM loss over every token. It compiles the step once, warms up,
times --steps steps (median) and prints one JSON line: step time, tokens/s, the model's
FLOP/s and that as a fraction of --peak_tflops (MFU), compile time, peak device memory.

  python experiments/gpu_llama_mfu.py --peak_tflops 989             # H100 SXM bf16 dense
  python experiments/gpu_llama_mfu.py --peak_tflops 989 --batch 8 --seq 2048 --remat full
  python experiments/gpu_llama_mfu.py --smoke                       # CPU, tiny config, seconds

Model FLOPs (PaLM's appendix B): 6·N·T + 12·L·H·d·S·T for T = B·S tokens, N the matmul
parameters (q, k, v, o, gate, up, down of every layer and the output projection; the
embedding lookup is not a matmul), the second term QK^T and AV over the whole S x S score
matrix. Recomputation under remat is not counted (MFU, not hardware FLOPs utilisation).

`llama_config` (and mtl_jax.models.decoder.train_flops) are shared with experiments/fsdp_memory.py and
experiments/llm_bench.py.
"""

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax.models.decoder import Decoder, DecoderConfig, segment_mask, train_flops
from mtl_jax.objectives.language_model import decoder_loss


def _llama3_rope(factor: float) -> tuple:
  return (('factor', factor), ('high_freq_factor', 4.0), ('low_freq_factor', 1.0),
          ('original_max_position_embeddings', 8192), ('rope_type', 'llama3'))


# Meta's published shapes (Hugging Face config.json of each model).
LLAMA = {
    'llama_1b': dict(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32,
                     num_kv_heads=8, head_dim=64, intermediate_size=8192, rope_theta=500000.0,
                     rope_scaling=_llama3_rope(32.0), max_position_embeddings=131072,
                     rms_norm_eps=1e-5, tie_word_embeddings=True),  # Llama-3.2-1B
    'llama_8b': dict(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                     num_kv_heads=8, head_dim=128, intermediate_size=14336,
                     rope_theta=500000.0, rope_scaling=_llama3_rope(8.0),
                     max_position_embeddings=131072, rms_norm_eps=1e-5,
                     tie_word_embeddings=False),  # Llama-3.1-8B
    # --smoke: the same layout, small enough for a CPU in seconds.
    'tiny': dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, rope_theta=500000.0, rope_scaling=_llama3_rope(32.0),
                 max_position_embeddings=1024, tie_word_embeddings=True),
}


def llama_config(name: str, **fields) -> DecoderConfig:
  """The DecoderConfig of a LLAMA shape, with `fields` (dtype, remat, ...) replaced."""
  return DecoderConfig(**{**LLAMA[name], **fields})


def make_step(cfg: DecoderConfig, learning_rate: float = 1e-4):
  """(init(key) -> (params, opt_state), step(params, opt_state, tokens) -> (params,
  opt_state, loss)): AdamW on the next-token loss over every token."""
  model = Decoder(cfg)
  optimizer = optax.adamw(learning_rate, weight_decay=0.01)

  def init(key):
    tokens = jnp.zeros((1, 1), jnp.int32)
    positions = jnp.zeros((1, 1), jnp.int32)
    params = nn.unbox(model.init(key, tokens, positions,
                                 segment_mask(tokens + 1, positions))['params'])
    return params, optimizer.init(params)

  def step(params, opt_state, tokens):
    ones = jnp.ones_like(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    loss_fn = lambda p: decoder_loss(model, p, tokens, positions,
                                     segment_mask(ones, positions), ones)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return init, step


def _figures(x: float, digits: int = 4) -> float:
  """x to `digits` significant figures (the --smoke config's MFU is about 1e-5)."""
  return float(f'{x:.{digits}g}')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', default='llama_1b', choices=sorted(LLAMA))
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--seq', type=int, default=2048)
  p.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  p.add_argument('--remat', default='dots', choices=('none', 'dots', 'full'),
                 help='per-layer rematerialisation (models/encoder.REMAT)')
  p.add_argument('--steps', type=int, default=10, help='timed steps (median)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--peak_tflops', type=float, default=989.0,
                 help="the device's peak dense TFLOP/s for --dtype (H100 SXM bf16: 989)")
  p.add_argument('--smoke', action='store_true',
                 help='a tiny config on the CPU (batch 2 x 64, 2 timed steps): checks the script')
  args = p.parse_args()
  if args.smoke:
    jax.config.update('jax_platforms', 'cpu')
    args.model, args.batch, args.seq, args.steps, args.warmup = 'tiny', 2, 64, 2, 1
  cfg = llama_config(args.model, dtype=args.dtype, remat=args.remat)
  init, step = make_step(cfg)
  device = jax.devices()[0]
  start = time.perf_counter()
  params, opt_state = jax.jit(init)(jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size,
                                                         (args.batch, args.seq)), jnp.int32)
  jax.block_until_ready(params)
  init_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile()
  compile_s = time.perf_counter() - start
  times, losses = [], []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, tokens)
    losses.append(float(loss))  # waits for the step
    if i >= args.warmup:
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  flops, n = train_flops(cfg, args.batch, args.seq)
  achieved = flops / step_s
  stats = device.memory_stats() or {}
  record = {
      'model': args.model, 'device': device.device_kind, 'platform': device.platform,
      'jax': jax.__version__, 'dtype': args.dtype, 'remat': args.remat,
      'parameters': sum(x.size for x in jax.tree.leaves(params)), 'matmul_parameters': n,
      'batch': args.batch, 'seq': args.seq, 'step_s': round(step_s, 4),
      'step_s_spread': [round(min(times), 4), round(max(times), 4)],
      'tokens_per_s': round(args.batch * args.seq / step_s),
      'model_tflop_per_step': _figures(flops / 1e12),
      'achieved_tflop_s': _figures(achieved / 1e12), 'peak_tflops': args.peak_tflops,
      'mfu': _figures(achieved / (args.peak_tflops * 1e12)),
      'compile_s': round(compile_s, 1), 'init_s': round(init_s, 1),
      'loss_first_last': [round(losses[0], 4), round(losses[-1], 4)],
      'peak_memory_gib': round(stats.get('peak_bytes_in_use', 0) / 2 ** 30, 2),
  }
  if not np.isfinite(losses).all():
    raise SystemExit(f'non-finite loss: {losses}')
  print(json.dumps(record))


if __name__ == '__main__':
  main()
