"""Batched text generation with the decoder: a compiled prefill, then a compiled one-token
step with the KV cache, looped on the host.

The host loop (not a lax.while_loop) is what lets tokens stream out as they come, stop
strings end a row (they need the decoded text), and the loop end as soon as every row has
finished; one step's dispatch costs far less than its matmuls.

Shapes are static: prompts are left-padded to a bucket length (BUCKETS), and the cache
holds bucket + max_new_tokens slots, so a chat recompiles only when its prompt outgrows a
bucket. Rotary positions come from the mask (a row's first real token is position 0).
Sampling (greedy, temperature, top-k, top-p) is deterministic for a given key: step t draws
with fold_in(key, t).
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.models.decoder import Decoder, cache_mask, init_cache

BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is drawn from the logits. temperature 0 is greedy (argmax);
  otherwise logits / temperature, keeping the top_k largest (0: all) and the smallest set
  whose probability reaches top_p (the nucleus, Holtzman et al. 2020; 1: all)."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p {self.top_p} is outside (0, 1].')
    if self.temperature < 0:
      raise ValueError(f'temperature {self.temperature} is negative.')
    if self.top_k < 0:
      raise ValueError(f'top_k {self.top_k} is negative.')


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """(B, V) float32 logits -> (B,) int32 token ids."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # the probability of the larger ones
    # Keep a token while the larger ones do not yet reach top_p (the first always stays).
    cutoff = jnp.min(jnp.where(before < sampling.top_p, ordered, jnp.inf), axis=-1,
                     keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def bucket(length: int, limit: int) -> int:
  """The smallest bucket that holds `length` tokens, at most `limit`."""
  for size in BUCKETS:
    if size >= length:
      return min(size, limit)
  return limit


class Generator:
  """Generates continuations of token-id prompts with a decoder's parameters.

  `stop_ids`: token ids that end a row (EOS, end of turn); the stop token is kept in the
  output. `pad_id` fills a finished row's remaining slots (never returned)."""

  def __init__(self, model: Decoder, params, stop_ids: Sequence[int], pad_id: int):
    self.model, self.params = model, params
    self.stop_ids = np.asarray(sorted(set(stop_ids)), np.int32)
    self.pad_id = pad_id
    self._prefill = jax.jit(self._prefill_fn, static_argnums=(5,), donate_argnums=(3,))
    self._step = jax.jit(self._step_fn, static_argnums=(8,), donate_argnums=(3,))

  def _logits(self, params, hidden):
    return self.model.apply({'params': params}, hidden, method=Decoder.logits)

  def _prefill_fn(self, params, tokens, mask, cache, key, sampling):
    """The prompts (B, P) into cache slots 0 .. P-1; the first new token (B,)."""
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    key_valid = jnp.zeros(cache.k.shape[1:3], bool).at[:, :tokens.shape[1]].set(mask > 0)
    out = self.model.apply({'params': params}, tokens, positions,
                           cache_mask(key_valid, 0, tokens.shape[1],
                                      self.model.cfg.sliding_window),
                           cache=cache, cache_start=0)
    token = sample(self._logits(params, out.hidden[:, -1]), jax.random.fold_in(key, 0),
                   sampling)
    return token, out.cache, key_valid, positions[:, -1] + 1

  def _step_fn(self, params, token, position, cache, key_valid, slot, step, key, sampling):
    """Feeds `token` (B,) at cache slot `slot` and rotary `position` (B,); the next one."""
    key_valid = key_valid.at[:, slot].set(True)
    out = self.model.apply({'params': params}, token[:, None], position[:, None],
                           cache_mask(key_valid, slot, 1, self.model.cfg.sliding_window),
                           cache=cache, cache_start=slot)
    token = sample(self._logits(params, out.hidden[:, 0]), jax.random.fold_in(key, step),
                   sampling)
    return token, out.cache, key_valid

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               sampling: Sampling = Sampling(), key: jax.Array | None = None,
               stop: Callable[[int, list[int]], bool] | None = None,
               on_token: Callable[[np.ndarray, np.ndarray], None] | None = None
               ) -> list[list[int]]:
    """Each prompt's new tokens (at most max_new_tokens, ending with a stop id if one
    came). `stop(row, tokens)` may end a row early (stop strings); `on_token(tokens,
    active)` sees each step's (B,) tokens and which rows they belong to (streaming)."""
    cfg = self.model.cfg
    if max_new_tokens <= 0:
      raise ValueError(f'max_new_tokens {max_new_tokens} must be positive.')
    if not prompts or min(len(p) for p in prompts) == 0:
      raise ValueError('every prompt needs at least one token.')
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_position_embeddings:
      raise ValueError(f'a prompt of {longest} tokens plus max_new_tokens {max_new_tokens} '
                       f'is longer than the cache (max_position_embeddings '
                       f'{cfg.max_position_embeddings}).')
    length = bucket(longest, cfg.max_position_embeddings - max_new_tokens)
    tokens = np.full((len(prompts), length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):  # left padding: every row ends at the last slot
      tokens[row, length - len(prompt):], mask[row, length - len(prompt):] = prompt, 1
    key = jax.random.key(0) if key is None else key
    cache = init_cache(cfg, len(prompts), length + max_new_tokens)
    token, cache, key_valid, position = self._prefill(self.params, tokens, mask, cache, key,
                                                      sampling)
    outputs = [[] for _ in prompts]
    active = np.ones(len(prompts), bool)
    for t in range(max_new_tokens):
      token = np.asarray(token)
      for row in np.flatnonzero(active):
        outputs[row].append(int(token[row]))
      if on_token is not None:
        on_token(token, active.copy())
      finished = np.isin(token, self.stop_ids)
      if stop is not None:
        finished |= np.array([bool(active[r]) and stop(r, outputs[r])
                              for r in range(len(prompts))])
      active &= ~finished
      if not active.any() or t == max_new_tokens - 1:
        break
      token = np.where(active, token, self.pad_id).astype(np.int32)
      token, cache, key_valid = self._step(self.params, token, position, cache, key_valid,
                                           length + t, t + 1, key, sampling)
      position = position + 1
    return outputs
