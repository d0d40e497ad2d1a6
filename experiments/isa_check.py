"""Does `--xla_cpu_max_isa` reach XLA's CPU code? Vector registers in the compiled code per ISA.

  python experiments/isa_check.py [AVX2 SSE4_2 ...]

For no flag and each ISA named (default AVX2 and SSE4_2), a fresh process compiles one
elementwise kernel with XLA_FLAGS=--xla_cpu_max_isa=<ISA> and --xla_dump_to, and this script
counts the xmm (128-bit), ymm (256-bit) and zmm (512-bit) registers in the dumped object code
(objdump -d). On an AVX-512 machine, no flag should show zmm and AVX2 none; on an AVX2 machine
no flag and AVX2 agree, and SSE4_2 shows only xmm. XLA_FLAGS set outside is kept.
"""

import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

KERNEL = ('import jax, jax.numpy as jnp; '
          'jax.block_until_ready(jax.jit(lambda x: jnp.exp(x) * 2 + 1)(jnp.ones((4096,))))')


def register_counts(isa: str | None) -> collections.Counter:
  with tempfile.TemporaryDirectory() as dump:
    flags = [os.environ.get('XLA_FLAGS', ''), f'--xla_dump_to={dump}']
    if isa:
      flags.append(f'--xla_cpu_max_isa={isa}')
    env = {**os.environ, 'XLA_FLAGS': ' '.join(flags), 'JAX_PLATFORMS': 'cpu'}
    subprocess.run([sys.executable, '-c', KERNEL], env=env, check=True)
    objects = glob.glob(os.path.join(dump, '*.o'))
    if not objects:
      raise RuntimeError(f'XLA dumped no object code to {dump} (XLA_FLAGS={env["XLA_FLAGS"]!r}).')
    counts = collections.Counter()
    for path in objects:
      code = subprocess.run(['objdump', '-d', path], capture_output=True, text=True,
                            check=True).stdout
      counts.update(re.findall(r'%([xyz]mm)\d+', code))
    return counts


def main(isas: list[str]):
  if shutil.which('objdump') is None:
    sys.exit('isa_check needs objdump (binutils) to read the compiled code.')
  print('| --xla_cpu_max_isa | xmm | ymm | zmm |')
  print('|---|---|---|---|')
  for isa in [None, *isas]:
    c = register_counts(isa)
    print(f'| {isa or "(none)"} | {c["xmm"]} | {c["ymm"]} | {c["zmm"]} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:] or ['AVX2', 'SSE4_2'])
