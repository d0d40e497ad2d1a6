"""Keeps XLA's per-step scratch memory resident on CPU hosts with glibc.

Each execution of a compiled step allocates one temp buffer (about 600 MB for bert-mini)
and frees it afterwards. glibc serves an allocation that large from a fresh mmap (from a
worker thread's arena it always does), so every step page-faults the whole buffer in again:
~150k faults, a fifth of the step. Serving everything from the main heap and never trimming
it lets the next step reuse the same, already-mapped pages.
"""

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # from glibc's <malloc.h>


def keep_step_buffers_resident():
  """Call before JAX starts its threads. A no-op where the C library has no mallopt."""
  mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
  if mallopt is None:
    return
  mallopt(_M_ARENA_MAX, 1)  # one heap for all threads, so none falls back to mmap
  mallopt(_M_MMAP_MAX, 0)
  # -1 disables trimming completely (mallopt(3)); a finite threshold, even 2**31 - 1, is
  # passed by a temp buffer over 2 GiB (SmolLM2's train step), whose every free then trims.
  mallopt(_M_TRIM_THRESHOLD, -1)
