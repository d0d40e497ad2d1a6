"""The benchmark runs end to end and reports what it promises (no timing is asserted)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_prints_one_json_line_with_method_ratios():
  cmd = [sys.executable, '-m', 'mtl_jax.bench', '--config',
         os.path.join(ROOT, 'experiments/configs/default.py:smoke'), '--repeats=1',
         '--matmul_size=64', '--weighting=pcgrad,gls', '--num_tasks=2', '--grouped',
         '--architectures=soft', '--peak_tflops=0.05']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (line,) = result.stdout.strip().splitlines()
  record = json.loads(line)
  assert record['num_tasks'] == 2 and record['grouped'] is True
  assert set(record['ratio_to_equal']) == {'pcgrad', 'gls'}
  for name, ratio in record['ratio_to_equal'].items():
    assert ratio > 0
    assert abs(ratio - record['weighting_step_s'][name] / record['step_s']) < 0.05 * ratio + 1e-3
  assert 0 < record['fraction_of_matmul'] and record['train_gflop_per_step'] > 0
  assert set(record['architecture_ratio']) == {'soft'}
  # achieved_gflop_s is printed to 0.1 GFLOP/s, so its quotient by 50 carries up to 1e-3 of rounding.
  assert record['mfu'] == pytest.approx(record['achieved_gflop_s'] / 50.0, rel=0.02, abs=1.1e-3)
  assert all(ratio > 0 for ratio in record['architecture_ratio'].values())
