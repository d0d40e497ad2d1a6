"""The decoder-LLM experiments run: the GPU MFU script's step and FLOP count on a tiny
config, the FSDP memory figures of the Llama shapes (abstract shapes only), and the MFU
script's --smoke command line. No test asserts a time."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from experiments import fsdp_memory, gpu_llama_mfu
from mtl_jax.models.decoder import train_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_flops_counts_every_matmul_by_hand():
  cfg = gpu_llama_mfu.llama_config('tiny')  # 2 layers, 64 wide, 4/2 heads of 16, FFN 128
  flops, n = train_flops(cfg, batch=2, seq=8)
  per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k, v, o, gate/up/down
  assert n == 2 * per_layer + 64 * 512  # + the tied output projection
  assert flops == 6 * n * 16 + 12 * 2 * 4 * 16 * 8 * 16


@pytest.mark.integration
def test_the_tiny_llama_step_trains():
  cfg = gpu_llama_mfu.llama_config('tiny', remat='full')
  init, step = gpu_llama_mfu.make_step(cfg, learning_rate=1e-2)
  params, opt_state = jax.jit(init)(jax.random.key(0))
  tokens = jnp.tile(jnp.arange(16, dtype=jnp.int32), (2, 1))
  step = jax.jit(step)
  losses = []
  for _ in range(3):
    params, opt_state, loss = step(params, opt_state, tokens)
    losses.append(float(loss))
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize('name', ['llama_1b', 'llama_8b'])
def test_fsdp_8_holds_at_most_0_14_of_the_state_per_device(name):
  one = ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1, 'rules': ()})
  fsdp = ml_collections.ConfigDict({'data': 1, 'fsdp': 8, 'tensor': 1, 'rules': ()})
  single = fsdp_memory.llama_memory(name, one, jax.devices()[:1])
  sharded = fsdp_memory.llama_memory(name, fsdp, jax.devices()[:8])
  assert single['state'] == 3 * single['params'] + 4  # parameters, Adam's mu and nu, its count
  assert sharded['state'] / single['state'] <= 0.14


@pytest.mark.slow
def test_the_mfu_script_smoke_run_prints_its_record():
  out = subprocess.run([sys.executable, 'experiments/gpu_llama_mfu.py', '--smoke',
                        '--peak_tflops=0.001'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'PYTHONPATH': ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  record = json.loads(out.stdout.strip().splitlines()[-1])
  assert record['model'] == 'tiny' and record['platform'] == 'cpu'
  assert record['step_s'] > 0 and record['tokens_per_s'] > 0 and record['mfu'] > 0
  assert record['loss_first_last'][1] < record['loss_first_last'][0]  # it trained
