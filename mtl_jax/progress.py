"""Progress bars for long work, and the throughput that training logs.

A bar shows on process 0 only, and only when stderr is a terminal: logs of batch jobs and CI
stay free of carriage-return noise. MTL_JAX_PROGRESS=0 silences it on a terminal too.
"""

import os
import sys
import time

import tqdm

from mtl_jax.parallel.distributed import is_writer

QUIET_ENV = 'MTL_JAX_PROGRESS'  # '0': no progress bars


def shown(quiet: bool = False) -> bool:
  """Whether a progress bar would print: not asked to be quiet, process 0, a terminal."""
  return (not quiet and os.environ.get(QUIET_ENV, '1') != '0' and is_writer()
          and sys.stderr.isatty())


def bar(total: int, desc: str, unit: str = 'step', quiet: bool = False,
        initial: int = 0) -> tqdm.tqdm:
  """A tqdm bar (ETA, rate; live metrics through set_postfix) that is silent unless shown;
  `initial`: where a resumed run starts."""
  return tqdm.tqdm(total=total, desc=desc, unit=unit, mininterval=1.0, initial=initial,
                   disable=not shown(quiet))


class Throughput:
  """Seconds per step and tokens per second between two log points.

  `tokens_per_step` counts padded positions (batch size × sequence length): what the
  accelerator computes on. The first interval includes compilation.
  """

  def __init__(self, tokens_per_step: int, first_step: int = 0):
    self._tokens_per_step = tokens_per_step
    self._step, self._time = first_step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    """{'step_time', 'tokens_per_second'} since the previous update (or the start)."""
    now = time.perf_counter()
    seconds, steps = now - self._time, step - self._step
    self._step, self._time = step, now
    return {'step_time': seconds / steps,
            'tokens_per_second': steps * self._tokens_per_step / seconds}
