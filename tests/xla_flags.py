"""XLA_FLAGS for the tests' forced CPU devices that keep the flags already set, e.g.
--xla_cpu_max_isa=AVX2 to run the suite as on a CPU with fewer vector instructions."""

import re

_COUNT = re.compile(r'--xla_force_host_platform_device_count=\S*')


def with_host_devices(flags: str, count: int) -> str:
  """`flags` with --xla_force_host_platform_device_count=count instead of any other count."""
  return ' '.join(_COUNT.sub('', flags).split()
                  + [f'--xla_force_host_platform_device_count={count}'])
